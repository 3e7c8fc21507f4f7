//! `wharf user create|list|delete|passwd` (issue #18): users of a running broker, through
//! the native user apis. The new password is read from the first line of standard input
//! (`--password-stdin`) and salted here; only its salted form goes to the broker.

use std::io::BufRead;

use clap::Subcommand;
use serde_json::{json, Value};
use wharf_client::{Admin, Client, ScramMechanism};

use crate::table::Table;
use crate::CliError;

/// `wharf user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        /// The user name (the password: the first line of standard input, with the global
        /// --password-stdin).
        name: String,
        /// Only this mechanism (default: both SCRAM-SHA-256 and SCRAM-SHA-512, so every
        /// client can log in with either).
        #[arg(long, value_name = "SCRAM-SHA-256|SCRAM-SHA-512", value_parser = parse_mechanism)]
        mechanism: Option<ScramMechanism>,
    },
    /// Change a user's password.
    Passwd {
        /// The user name (the new password: the first line of standard input, with the
        /// global --password-stdin).
        name: String,
        /// Only this mechanism (default: both).
        #[arg(long, value_name = "SCRAM-SHA-256|SCRAM-SHA-512", value_parser = parse_mechanism)]
        mechanism: Option<ScramMechanism>,
    },
    /// Delete a user.
    Delete {
        /// The user name.
        name: String,
    },
    /// List the users and the mechanisms they can log in with.
    List,
}

/// Parses a SCRAM mechanism name.
///
/// # Errors
/// A message naming the accepted values.
pub fn parse_mechanism(text: &str) -> Result<ScramMechanism, String> {
    ScramMechanism::from_name(text)
        .ok_or_else(|| format!("{text:?} is not SCRAM-SHA-256 or SCRAM-SHA-512"))
}

/// True for the commands whose `--password-stdin` is the new user's password (not the
/// login's).
pub fn reads_new_password(command: &UserCommand) -> bool {
    matches!(
        command,
        UserCommand::Create { .. } | UserCommand::Passwd { .. }
    )
}

/// Runs a `wharf user` command.
///
/// # Errors
/// [`CliError`] for a refused change or a connection failure.
pub async fn run(
    client: &Client,
    command: UserCommand,
    password_stdin: bool,
    json: bool,
) -> Result<(), CliError> {
    let admin = Admin::new(client);
    let new_password = || {
        if password_stdin {
            read_password()
        } else {
            Err(CliError::BadInput {
                line_number: 1,
                reason: "give the new password on standard input with --password-stdin".to_string(),
            })
        }
    };
    let chosen = |mechanism: Option<ScramMechanism>| match mechanism {
        Some(mechanism) => vec![mechanism],
        None => ScramMechanism::ALL.to_vec(),
    };
    match command {
        UserCommand::Create { name, mechanism } => {
            let password = new_password()?;
            admin
                .create_user(&name, &password, &chosen(mechanism))
                .await?;
            report(json, "created", &name);
        }
        UserCommand::Passwd { name, mechanism } => {
            let password = new_password()?;
            admin
                .change_password(&name, &password, &chosen(mechanism))
                .await?;
            report(json, "changed the password of", &name);
        }
        UserCommand::Delete { name } => {
            admin.delete_user(&name).await?;
            report(json, "deleted", &name);
        }
        UserCommand::List => {
            let users = admin.list_users().await?;
            if json {
                let document: Vec<Value> = users
                    .iter()
                    .map(|user| {
                        json!({
                            "name": user.name,
                            "mechanisms": user.credentials.iter().map(|(mechanism, iterations)| json!({
                                "mechanism": mechanism,
                                "iterations": iterations,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!("{}", Value::Array(document));
            } else {
                let mut table = Table::new(&["USER", "MECHANISMS"]);
                for user in &users {
                    let mechanisms: Vec<&str> = user
                        .credentials
                        .iter()
                        .map(|(mechanism, _)| mechanism.as_str())
                        .collect();
                    table.row(vec![user.name.clone(), mechanisms.join(",")]);
                }
                print!("{}", table.render());
            }
        }
    }
    Ok(())
}

fn report(json: bool, what: &str, name: &str) {
    if json {
        println!("{}", json!({ "user": name, "result": what }));
    } else {
        println!("{what} user {name}");
    }
}

/// The first line of standard input, without its line end.
///
/// # Errors
/// [`CliError::Stdin`] if it cannot be read; [`CliError::BadInput`] if it is empty.
pub fn read_password() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(CliError::Stdin)?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(CliError::BadInput {
            line_number: 1,
            reason: "the password is empty".to_string(),
        });
    }
    Ok(password)
}
