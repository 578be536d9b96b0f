//! The states `status` and `explain` report, as types. On every wire (the
//! socket's MessagePack, `--json`) each is its snake_case name, a plain
//! string as in protocol 3 before these types existed; a name this client
//! does not know (a newer daemon's state) reads as `Unknown(name)` instead of
//! failing the whole report.

use serde::{Deserialize, Serialize};

macro_rules! wire_state {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A state a newer daemon reports that this build does not know.
            Unknown(String),
        }

        impl $name {
            /// The name on the wire and in text output.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Unknown(other) => other,
                }
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                match text.as_str() {
                    $($text => $name::$variant,)+
                    _ => $name::Unknown(text),
                }
            }
        }

        impl From<$name> for String {
            fn from(state: $name) -> String {
                state.as_str().to_string()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

wire_state! {
    /// Where a project stands (`status`).
    pub enum ProjectState {
        /// Registered, no build finished yet.
        NeverBuilt => "never_built",
        /// The last build succeeded and nothing it read changed since.
        Clean => "clean",
        /// A file, the Dockerfile or a base changed since the last build, or
        /// the Dockerfile cannot be planned now.
        Dirty => "dirty",
        /// A build waits for a slot (`max-parallel-builds`).
        Queued => "queued",
        Building => "building",
        /// The last build failed and nothing changed since.
        Failed => "failed",
    }
}

wire_state! {
    /// Where one step stands (`status`).
    pub enum StepState {
        /// Its last result is current.
        Clean => "clean",
        /// It would run again: `why` says what changed.
        Dirty => "dirty",
        /// Running in the build under way.
        Building => "building",
        /// Taken from the cache by the build under way.
        Cached => "cached",
        /// Ran in the build under way.
        Done => "done",
        /// It ran and failed in the last build.
        Failed => "failed",
    }
}

wire_state! {
    /// What happened to a step in a project's last build (`explain`).
    pub enum StepOutcome {
        Cached => "cached",
        Rebuilt => "rebuilt",
        /// It ran and failed.
        Failed => "failed",
        /// The build failed before it.
        NotBuilt => "not_built",
    }
}

wire_state! {
    /// Where a build's log stands (`logs`).
    pub enum BuildLogState {
        Running => "running",
        Finished => "finished",
        /// The daemon stopped during the build.
        Interrupted => "interrupted",
    }
}

wire_state! {
    /// How the daemon follows a context tree (`status`).
    pub enum TreeMode {
        /// inotify watches cover the tree.
        Watching => "watching",
        /// Events were lost: the next sync rescans the tree.
        RescanPending => "rescan_pending",
        /// The tree cannot be watched: every sync rescans it.
        Polling => "polling",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_plain_strings_on_every_wire() {
        let json = serde_json::to_string(&ProjectState::NeverBuilt).expect("json");
        assert_eq!(json, "\"never_built\"");
        // A client from before these types reads a String, and a newer
        // daemon's state reads as Unknown rather than an error.
        let packed = rmp_serde::to_vec_named(&StepState::Dirty).expect("msgpack");
        let old: String = rmp_serde::from_slice(&packed).expect("as a string");
        assert_eq!(old, "dirty");
        let newer = rmp_serde::to_vec_named("paused").expect("msgpack");
        let read: StepState = rmp_serde::from_slice(&newer).expect("as a state");
        assert_eq!(read, StepState::Unknown("paused".into()));
        assert_eq!(read.to_string(), "paused");
        let outcome: StepOutcome = serde_json::from_str("\"not_built\"").expect("json");
        assert_eq!(outcome, StepOutcome::NotBuilt);
    }
}
