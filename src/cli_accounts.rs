//! `vmscan user …` and `vmscan token …`: account management from the
//! server's shell, on the configured database. Whoever runs them holds the
//! database already, so they act as admin; each action is in the audit trail
//! as `shell:<OS user>`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{TokenAction, UserAction};
use crate::config::Config;
use crate::domain::{fmt_millis, now_millis, Role};
use crate::identity::accounts::{self, TokenRequest};
use crate::store::auth::{AuditAction, AuditEntry, Outcome, UserChange};
use crate::store::DynStore;

pub(crate) fn shell_user() -> String {
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("shell:{who}")
}

pub async fn audit(
    store: &DynStore,
    action: AuditAction,
    object: Option<String>,
    detail: Option<String>,
) {
    let e = AuditEntry {
        actor: Some(shell_user()),
        address: Some("cli".into()),
        action,
        object,
        outcome: Outcome::Ok,
        detail,
    };
    if let Err(err) = store.append_audit(&e).await {
        eprintln!("warning: cannot write the audit trail: {err}");
    }
}

/// One line of stdin, or a prompt with echo off on a terminal.
fn read_password(from_stdin: bool, confirm: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if from_stdin || !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        let pw = line.trim_end_matches(['\n', '\r']).to_string();
        anyhow::ensure!(!pw.is_empty(), "no password on standard input");
        return Ok(pw);
    }
    let ask = |prompt: &str| -> anyhow::Result<String> {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        eprint!("{prompt}");
        std::io::stderr().flush()?;
        let fd = std::io::stdin();
        let old = tcgetattr(&fd)?;
        let mut quiet = old.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&fd, SetArg::TCSANOW, &quiet)?;
        let mut line = String::new();
        let r = std::io::stdin().lock().read_line(&mut line);
        tcsetattr(&fd, SetArg::TCSANOW, &old)?;
        eprintln!();
        r?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let pw = ask("Password: ")?;
    if confirm {
        anyhow::ensure!(ask("Again: ")? == pw, "the passwords differ");
    }
    Ok(pw)
}

fn role(s: &str) -> anyhow::Result<Role> {
    Ok(s.parse::<Role>()?)
}

pub async fn user(store: &DynStore, action: UserAction) -> anyhow::Result<ExitCode> {
    match action {
        UserAction::Add {
            name,
            role: r,
            password_stdin,
            email,
            display_name,
        } => {
            let r = role(&r)?;
            let pw = if password_stdin || std::io::stdin().is_terminal() {
                Some(read_password(password_stdin, true)?)
            } else {
                None
            };
            let u = accounts::add_local_user(store, &name, r, pw.as_deref(), email, display_name)
                .await?;
            audit(
                store,
                AuditAction::UserCreated,
                Some(format!("user:{}", u.name)),
                Some(format!("local, role {}", u.role)),
            )
            .await;
            println!(
                "user {} added ({}{})",
                u.name,
                u.role,
                if u.has_password {
                    ""
                } else {
                    ", no password: tokens only"
                }
            );
        }
        UserAction::Passwd {
            name,
            password_stdin,
        } => {
            let pw = read_password(password_stdin, true)?;
            accounts::set_password(store, &name, &pw).await?;
            audit(
                store,
                AuditAction::UserChanged,
                Some(format!("user:{name}")),
                Some("password set".into()),
            )
            .await;
            println!("password of {name} changed; their sessions ended");
        }
        UserAction::List => {
            println!(
                "{:<24} {:<10} {:<6} {:<9} {:<30} LAST LOGIN",
                "NAME", "ROLE", "SOURCE", "STATE", "EMAIL"
            );
            for u in store.list_users().await? {
                println!(
                    "{:<24} {:<10} {:<6} {:<9} {:<30} {}",
                    u.name,
                    u.role.as_str(),
                    u.source,
                    if u.disabled { "disabled" } else { "active" },
                    u.email.unwrap_or_default(),
                    u.last_login_at
                        .map(fmt_millis)
                        .unwrap_or_else(|| "never".into())
                );
            }
        }
        UserAction::Role { name, role: r } => {
            let r = role(&r)?;
            let change = UserChange {
                role: Some(r),
                ..Default::default()
            };
            accounts::change_user(store, &name, &change).await?;
            audit(
                store,
                AuditAction::UserChanged,
                Some(format!("user:{name}")),
                Some(format!("role {r}")),
            )
            .await;
            println!("{name} is now {r}");
        }
        UserAction::Disable { name } => set_disabled(store, &name, true).await?,
        UserAction::Enable { name } => set_disabled(store, &name, false).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_disabled(store: &DynStore, name: &str, disabled: bool) -> anyhow::Result<()> {
    let change = UserChange {
        disabled: Some(disabled),
        ..Default::default()
    };
    accounts::change_user(store, name, &change).await?;
    let what = if disabled { "disabled" } else { "enabled" };
    audit(
        store,
        AuditAction::UserChanged,
        Some(format!("user:{name}")),
        Some(what.into()),
    )
    .await;
    println!("{name} {what}");
    Ok(())
}

pub async fn token(
    store: &DynStore,
    cfg: &Config,
    action: TokenAction,
) -> anyhow::Result<ExitCode> {
    match action {
        TokenAction::Create {
            user,
            role: r,
            name,
            expires_days,
        } => {
            let r = role(&r)?;
            if store.get_user(&user).await?.is_none() {
                accounts::add_local_user(store, &user, r, None, None, None).await?;
                eprintln!("note: added {user} as a token-only local user with the {r} role");
                audit(
                    store,
                    AuditAction::UserCreated,
                    Some(format!("user:{user}")),
                    Some(format!("token-only, role {r}")),
                )
                .await;
            }
            let shell = shell_user();
            let (secret, t) = accounts::issue_token(
                store,
                &TokenRequest {
                    user: &user,
                    role: Some(r),
                    name: name.as_deref().unwrap_or("cli"),
                    expires_days,
                    created_by: &shell,
                    ceiling: Role::Admin,
                    max_days: cfg.auth.max_token_days,
                },
            )
            .await
            .context("cannot create the token")?;
            audit(
                store,
                AuditAction::TokenCreated,
                Some(format!("token:{}", t.id)),
                Some(format!("for {}, role {}", t.user, t.role)),
            )
            .await;
            println!("{secret}");
        }
        TokenAction::List { user } => {
            let now = now_millis();
            println!(
                "{:<6} {:<20} {:<24} {:<10} {:<9} {:<22} LAST USED",
                "ID", "USER", "NAME", "ROLE", "STATE", "EXPIRES"
            );
            for t in store.list_tokens(user.as_deref()).await? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.is_live(now) {
                    "live"
                } else {
                    "expired"
                };
                println!(
                    "{:<6} {:<20} {:<24} {:<10} {:<9} {:<22} {}",
                    t.id,
                    t.user,
                    t.name,
                    t.role.as_str(),
                    state,
                    t.expires_at
                        .map(fmt_millis)
                        .unwrap_or_else(|| "never".into()),
                    t.last_used_at
                        .map(fmt_millis)
                        .unwrap_or_else(|| "never".into())
                );
            }
        }
        TokenAction::Revoke { id } => {
            anyhow::ensure!(
                store.revoke_token(id).await?,
                "token {id} does not exist or was already revoked"
            );
            audit(
                store,
                AuditAction::TokenRevoked,
                Some(format!("token:{id}")),
                None,
            )
            .await;
            println!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
