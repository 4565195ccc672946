//! The MQTT topic scheme, versioned so a future wire format can live beside this one:
//! `edgeloop/v1/{agent}/{channel}`.
//!
//! | channel     | direction          | payload                                   |
//! |-------------|--------------------|-------------------------------------------|
//! | `telemetry` | agent → collector  | [`crate::batch`] wire format              |
//! | `events`    | agent → collector  | reserved for the priority lane of events  |
//! | `status`    | agent → collector  | agent status (retained, last will)        |
//! | `ack`       | collector → agent  | [`crate::model::Ack`]                     |
//! | `cmd`       | collector → agent  | [`crate::model::SignedCommand`]           |
//! | `result`    | agent → collector  | [`crate::model::CommandResult`]           |

/// Every edgeloop topic starts with this.
pub const PREFIX: &str = "edgeloop/v1";

/// The last level of an edgeloop topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Telemetry,
    Events,
    Status,
    Ack,
    Cmd,
    /// The agent's answers to commands.
    Result,
}

impl Channel {
    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Telemetry => "telemetry",
            Channel::Events => "events",
            Channel::Status => "status",
            Channel::Ack => "ack",
            Channel::Cmd => "cmd",
            Channel::Result => "result",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "telemetry" => Channel::Telemetry,
            "events" => Channel::Events,
            "status" => Channel::Status,
            "ack" => Channel::Ack,
            "cmd" => Channel::Cmd,
            "result" => Channel::Result,
            _ => return None,
        })
    }
}

/// Splits an edgeloop topic into its agent id and channel; `None` for anything else
/// (another prefix or version, a missing level, an invalid agent id).
pub fn parse(topic: &str) -> Option<(&str, Channel)> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let (agent, channel) = rest.split_once('/')?;
    crate::id::validate(agent).ok()?;
    Some((agent, Channel::parse(channel)?))
}

/// The topic an agent publishes or receives `channel` on.
#[cfg(feature = "alloc")]
pub fn topic(agent: &str, channel: Channel) -> alloc::string::String {
    alloc::format!("{PREFIX}/{agent}/{}", channel.as_str())
}

/// The filter that matches `channel` for every agent, e.g. `edgeloop/v1/+/telemetry`.
#[cfg(feature = "alloc")]
pub fn all_agents(channel: Channel) -> alloc::string::String {
    alloc::format!("{PREFIX}/+/{}", channel.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for ch in [Channel::Telemetry, Channel::Events, Channel::Status, Channel::Ack, Channel::Cmd, Channel::Result] {
            let t = topic("gw-1", ch);
            assert_eq!(parse(&t), Some(("gw-1", ch)));
        }
        assert_eq!(all_agents(Channel::Telemetry), "edgeloop/v1/+/telemetry");
    }

    #[test]
    fn foreign_topics_are_not_ours() {
        assert_eq!(parse("edgeloop/v2/gw/telemetry"), None);
        assert_eq!(parse("edgeloop/v1/gw/unknown"), None);
        assert_eq!(parse("edgeloop/v1/gw"), None);
        assert_eq!(parse("edgeloop/v1/g+w/telemetry"), None);
        assert_eq!(parse("edgeloop/v1/gw/telemetry/extra"), None);
    }
}
