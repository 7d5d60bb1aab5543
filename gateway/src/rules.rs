//! The destination policy: which `/topic/...` and `/queue/...` destinations clients may use for
//! their own publish/subscribe, beyond the application's (`/app/**`, room topics, `/user/queue/**`),
//! whose checks stay as they are.
//!
//! A rule names a prefix and who may SUBSCRIBE and who may SEND there: `nobody` (the default),
//! `signed-in` (any session with a token) or `role:<ROLE>` (the token's `role` claim). The longest
//! matching prefix decides. Wildcard subscriptions (`*` one word, `#` the rest, RabbitMQ's topic
//! exchange rules) are accepted only under a rule with `wildcards = true`. No rule: nothing opens.
//!
//! Rules come from settings as a TOML array of tables (`[[destinations]]`) or as JSON
//! (`INSTAR_DESTINATIONS='[{"prefix":"/queue/jobs.","subscribe":"signed-in","send":"signed-in"}]'`),
//! both read into [`Rule`] by serde.

use serde::{Deserialize, Serialize};

use crate::auth::Principal;

/// Who may do something on a destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Access {
    /// No one (the default).
    #[default]
    Nobody,
    /// Any session with a valid token (never an anonymous one).
    SignedIn,
    /// Sessions whose token carries this `role` claim.
    Role(String),
}

impl Access {
    /// Reads `nobody`, `signed-in` or `role:<ROLE>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "nobody" => Ok(Self::Nobody),
            "signed-in" => Ok(Self::SignedIn),
            _ => match s.strip_prefix("role:") {
                Some(role) if !role.is_empty() => Ok(Self::Role(role.to_owned())),
                _ => Err(format!(
                    "invalid access '{s}': use nobody, signed-in or role:<ROLE>"
                )),
            },
        }
    }

    /// Whether `principal` (None: anonymous) has this access.
    pub fn allows(&self, principal: Option<&Principal>) -> bool {
        match (self, principal) {
            (Self::Nobody, _) | (_, None) => false,
            (Self::SignedIn, Some(_)) => true,
            (Self::Role(role), Some(p)) => p.role.as_deref() == Some(role.as_str()),
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Nobody => f.write_str("nobody"),
            Self::SignedIn => f.write_str("signed-in"),
            Self::Role(role) => write!(f, "role:{role}"),
        }
    }
}

impl Serialize for Access {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Access {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One rule: a destination prefix and who may use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `/topic/<prefix>` or `/queue/<prefix>`; the rest may be empty (every topic, every queue) and
    /// uses `[A-Za-z0-9._-]`.
    pub prefix: String,
    /// Who may SUBSCRIBE.
    #[serde(default)]
    pub subscribe: Access,
    /// Who may SEND.
    #[serde(default)]
    pub send: Access,
    /// Whether subscriptions with `*` and `#` are accepted (topics only).
    #[serde(default)]
    pub wildcards: bool,
}

/// What a destination is, for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Topic,
    Queue,
}

impl Rule {
    fn kind_and_rest(&self) -> Option<(Kind, &str)> {
        if let Some(rest) = self.prefix.strip_prefix("/topic/") {
            Some((Kind::Topic, rest))
        } else {
            self.prefix
                .strip_prefix("/queue/")
                .map(|rest| (Kind::Queue, rest))
        }
    }
}

/// The rules in force (empty by default: only the application's destinations exist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    /// Longest prefix first.
    rules: Vec<(Kind, String, Rule)>,
}

impl Destinations {
    /// Checks and orders rules; every problem is reported at once.
    pub fn new(rules: Vec<Rule>) -> Result<Self, String> {
        let mut problems = Vec::new();
        let mut out = Vec::new();
        for rule in rules {
            let Some((kind, rest)) = rule.kind_and_rest() else {
                problems.push(format!(
                    "destination rule '{}': the prefix must start with /topic/ or /queue/",
                    rule.prefix
                ));
                continue;
            };
            if rest.len() > crate::destination::MAX_NAME
                || !rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                problems.push(format!(
                    "destination rule '{}': use letters, digits, '.', '_' and '-' after the prefix",
                    rule.prefix
                ));
                continue;
            }
            if rule.wildcards && kind == Kind::Queue {
                problems.push(format!(
                    "destination rule '{}': wildcards apply to topics only",
                    rule.prefix
                ));
                continue;
            }
            if out
                .iter()
                .any(|(k, r, _): &(Kind, String, Rule)| *k == kind && r == rest)
            {
                problems.push(format!("destination rule '{}' is given twice", rule.prefix));
                continue;
            }
            out.push((kind, rest.to_owned(), rule));
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        out.sort_by_key(|(_, rest, _)| std::cmp::Reverse(rest.len()));
        Ok(Self { rules: out })
    }

    /// Reads rules from JSON (an array of rule objects), as `INSTAR_DESTINATIONS` carries them.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let rules: Vec<Rule> =
            serde_json::from_str(text).map_err(|e| format!("invalid destination rules: {e}"))?;
        Self::new(rules)
    }

    /// Whether no rule is set.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule for a destination name (after `/topic/` or `/queue/`); for a wildcard pattern, the
    /// rule covering its literal part before the first wildcard.
    pub fn rule(&self, kind: Kind, name: &str) -> Option<&Rule> {
        let literal = match name.find(['*', '#']) {
            Some(i) => &name[..i],
            None => name,
        };
        self.rules
            .iter()
            .find(|(k, rest, _)| *k == kind && literal.starts_with(rest.as_str()))
            .map(|(_, _, r)| r)
    }

    /// May `principal` subscribe to `name` (a pattern when it holds `*`/`#`)? `None`: no rule
    /// covers it (the application's own policy decides topics).
    pub fn may_subscribe(
        &self,
        kind: Kind,
        name: &str,
        principal: Option<&Principal>,
    ) -> Option<bool> {
        let rule = self.rule(kind, name)?;
        let wild = name.contains(['*', '#']);
        Some(rule.subscribe.allows(principal) && (!wild || rule.wildcards))
    }

    /// May `principal` send to `name`? Without a rule: no.
    pub fn may_send(&self, kind: Kind, name: &str, principal: Option<&Principal>) -> bool {
        self.rule(kind, name)
            .is_some_and(|r| r.send.allows(principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Option<&str>) -> Principal {
        Principal {
            user: "u".into(),
            role: role.map(str::to_owned),
            expires_at: 0,
            version: 0,
        }
    }

    #[test]
    fn longest_prefix_decides() {
        let d = Destinations::from_json(
            r#"[{"prefix":"/topic/demo.","subscribe":"signed-in","send":"signed-in","wildcards":true},
                {"prefix":"/topic/demo.admin.","subscribe":"role:ADMIN"},
                {"prefix":"/queue/","subscribe":"signed-in","send":"role:ROLE_USER"}]"#,
        )
        .unwrap();
        let user = who(Some("ROLE_USER"));
        let admin = who(Some("ADMIN"));
        assert_eq!(
            d.may_subscribe(Kind::Topic, "demo.x", Some(&user)),
            Some(true)
        );
        assert_eq!(
            d.may_subscribe(Kind::Topic, "demo.*", Some(&user)),
            Some(true)
        );
        assert_eq!(d.may_subscribe(Kind::Topic, "demo.x", None), Some(false));
        assert_eq!(
            d.may_subscribe(Kind::Topic, "demo.admin.x", Some(&user)),
            Some(false)
        );
        assert_eq!(
            d.may_subscribe(Kind::Topic, "demo.admin.x", Some(&admin)),
            Some(true)
        );
        assert!(!d.may_send(Kind::Topic, "demo.admin.x", Some(&admin)));
        assert_eq!(d.may_subscribe(Kind::Topic, "chat.5", Some(&user)), None);
        assert!(d.may_send(Kind::Queue, "jobs", Some(&user)));
        assert!(!d.may_send(Kind::Queue, "jobs", Some(&admin)));
        // A pattern whose literal part leaves the rule's prefix is not covered by it.
        assert_eq!(d.may_subscribe(Kind::Topic, "#", Some(&user)), None);
        assert_eq!(d.may_subscribe(Kind::Topic, "dem*", Some(&user)), None);
    }

    #[test]
    fn bad_rules_are_all_reported() {
        let e = Destinations::from_json(
            r#"[{"prefix":"/app/x"},{"prefix":"/queue/a b"},{"prefix":"/queue/q","wildcards":true},
                {"prefix":"/topic/t","send":"everyone"}]"#,
        )
        .unwrap_err();
        assert!(e.contains("everyone"), "{e}");
        let e = Destinations::from_json(
            r#"[{"prefix":"/app/x"},{"prefix":"/queue/a b"},{"prefix":"/queue/q","wildcards":true}]"#,
        )
        .unwrap_err();
        assert!(
            e.contains("/app/x") && e.contains("a b") && e.contains("topics only"),
            "{e}"
        );
        assert!(Destinations::from_json(r#"[{"prefix":"/topic/x","other":1}]"#).is_err());
    }
}
