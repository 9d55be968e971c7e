//! The XML of vSphere's SOAP answers as a small owned tree (parsed with
//! roxmltree, like the WinRM code), and writing request values.

/// One element: its local name, `xsi:type`, the `type` attribute of a
/// managed object reference, its text and its children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub xsi_type: Option<String>,
    pub type_attr: Option<String>,
    pub text: String,
    pub children: Vec<Element>,
}

const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

impl Element {
    pub fn parse(text: &str) -> Result<Element, String> {
        let opts = roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: 4_000_000,
            ..roxmltree::ParsingOptions::default()
        };
        let doc = roxmltree::Document::parse_with_options(text, opts)
            .map_err(|e| format!("not XML: {e}"))?;
        Ok(Element::from_node(doc.root_element()))
    }

    fn from_node(n: roxmltree::Node<'_, '_>) -> Element {
        let mut e = Element {
            name: n.tag_name().name().to_string(),
            xsi_type: n
                .attributes()
                .find(|a| a.name() == "type" && a.namespace() == Some(XSI))
                .map(|a| strip_prefix(a.value())),
            // Only the un-prefixed `type`: a lookup by name alone may
            // also match `xsi:type`.
            type_attr: n
                .attributes()
                .find(|a| a.name() == "type" && a.namespace().is_none())
                .map(|a| a.value().to_string()),
            ..Element::default()
        };
        for c in n.children() {
            if c.is_element() {
                e.children.push(Element::from_node(c));
            } else if c.is_text() {
                e.text.push_str(c.text().unwrap_or_default());
            }
        }
        e
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The element at a `/`-separated path of child names.
    pub fn at(&self, path: &str) -> Option<&Element> {
        path.split('/').try_fold(self, |e, n| e.child(n))
    }

    /// The trimmed text at `path` ("" when missing).
    pub fn text_at(&self, path: &str) -> String {
        self.at(path)
            .map(|e| e.text.trim().to_string())
            .unwrap_or_default()
    }

    /// The element again as request XML (for values passed through, such as
    /// the import spec `CreateImportSpec` returns to `ImportVApp`).
    pub fn write_as(&self, name: &str, out: &mut String) {
        out.push('<');
        out.push_str(name);
        // A reference carries its type in `type`; an `xsi:type` next to it
        // would be taken for that by decoders matching attributes by local
        // name (Go's encoding/xml, which vcsim and govmomi use).
        if let Some(t) = &self.type_attr {
            out.push_str(&format!(" type=\"{}\"", escape(t)));
        } else if let Some(t) = &self.xsi_type {
            out.push_str(&format!(" xsi:type=\"{}\"", escape(t)));
        }
        out.push('>');
        if self.children.is_empty() {
            out.push_str(&escape(&self.text));
        }
        for c in &self.children {
            c.write_as(&c.name, out);
        }
        out.push_str(&format!("</{name}>"));
    }
}

/// `xsd:string` → `string`; vim25 types come without a prefix.
fn strip_prefix(t: &str) -> String {
    t.rsplit(':').next().unwrap_or(t).to_string()
}

/// Escapes text for an XML element or attribute.
pub use crate::domain::escape_markup as escape;

/// `<name>text</name>`, escaped.
pub fn el(name: &str, text: &str) -> String {
    format!("<{name}>{}</{name}>", escape(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_types_references_and_text_and_writes_them_back() {
        let doc = r#"<r xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><val xsi:type="ManagedObjectReference" type="Folder">group-v3</val><spec xsi:type="VirtualMachineImportSpec"><name>a &amp; b</name><pool type="ResourcePool" xsi:type="ManagedObjectReference">resgroup-1</pool></spec></r>"#;
        let e = Element::parse(doc).unwrap();
        let v = e.child("val").unwrap();
        assert_eq!(v.type_attr.as_deref(), Some("Folder"));
        assert_eq!(v.xsi_type.as_deref(), Some("ManagedObjectReference"));
        assert_eq!(v.text, "group-v3");
        assert_eq!(e.text_at("spec/name"), "a & b");
        let mut out = String::new();
        e.child("spec").unwrap().write_as("spec", &mut out);
        assert_eq!(
            out,
            r#"<spec xsi:type="VirtualMachineImportSpec"><name>a &amp; b</name><pool type="ResourcePool">resgroup-1</pool></spec>"#
        );
    }

    #[test]
    fn a_dtd_is_refused() {
        assert!(Element::parse("<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>").is_err());
    }
}
