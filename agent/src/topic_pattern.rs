//! MQTT topic filters with named wildcards, and the sensor id template they fill:
//! `sensors/{machine}/{sensor}` with `{machine}.{sensor}` maps `sensors/press-3/temp` to
//! `press-3.temp`. Its own module because both the config validation and the MQTT source parse
//! patterns, and neither should import the other for it.

/// One level of a topic filter.
#[derive(Debug, Clone, PartialEq)]
enum Level {
    Literal(String),
    Named(String),
    Plus,
    Hash,
}

/// A filter with named wildcards and the sensor id template it fills.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPattern {
    levels: Vec<Level>,
    template: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Name(String),
}

impl TopicPattern {
    /// Parses `filter` and the sensor `template`; the error says what to fix.
    pub fn parse(filter: &str, template: &str) -> Result<Self, String> {
        if filter.is_empty() {
            return Err("the filter is empty".into());
        }
        let parts: Vec<&str> = filter.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Plus,
                "#" if i == parts.len() - 1 => Level::Hash,
                "#" => return Err(format!("filter {filter:?}: '#' may only be the last level")),
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if levels.iter().any(|l| *l == Level::Named(name.into())) {
                        return Err(format!("filter {filter:?}: {{{name}}} appears twice"));
                    }
                    Level::Named(name.into())
                }
                p if p.contains(['+', '#', '{', '}']) => {
                    return Err(format!("filter {filter:?}: level {p:?} mixes text and wildcards"));
                }
                p => Level::Literal(p.into()),
            };
            levels.push(level);
        }
        let mut template_pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                template_pieces.push(Piece::Text(rest[..open].into()));
            }
            let close =
                rest[open..].find('}').ok_or_else(|| format!("sensor template {template:?}: '{{' without '}}'"))?
                    + open;
            let name = &rest[open + 1..close];
            if !levels.contains(&Level::Named(name.into())) {
                return Err(format!(
                    "sensor template {template:?} uses {{{name}}}, which the filter {filter:?} does not name"
                ));
            }
            template_pieces.push(Piece::Name(name.into()));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            template_pieces.push(Piece::Text(rest.into()));
        }
        if template_pieces.is_empty() {
            return Err("the sensor template is empty".into());
        }
        Ok(Self { levels, template: template_pieces })
    }

    /// The MQTT subscription filter (`{name}` becomes `+`).
    pub fn subscription(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Named(_) | Level::Plus => "+",
                Level::Hash => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The sensor id for `topic`, or `None` when the topic does not match.
    pub fn sensor(&self, topic: &str) -> Option<String> {
        let mut captured: Vec<(&str, &str)> = Vec::new();
        let mut parts = topic.split('/');
        let mut rest_matches = false;
        for level in &self.levels {
            if *level == Level::Hash {
                rest_matches = true;
                break;
            }
            let part = parts.next()?;
            match level {
                Level::Literal(l) if l != part => return None,
                Level::Named(n) => captured.push((n, part)),
                _ => {}
            }
        }
        if !rest_matches && parts.next().is_some() {
            return None;
        }
        let mut id = String::new();
        for piece in &self.template {
            match piece {
                Piece::Text(t) => id.push_str(t),
                Piece::Name(n) => id.push_str(captured.iter().find(|(k, _)| k == n)?.1),
            }
        }
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_wildcards_map_topics_to_sensor_ids() {
        let p = TopicPattern::parse("sensors/{machine}/{sensor}", "{machine}.{sensor}").unwrap();
        assert_eq!(p.subscription(), "sensors/+/+");
        assert_eq!(p.sensor("sensors/press-3/temp").as_deref(), Some("press-3.temp"));
        assert_eq!(p.sensor("sensors/press-3"), None);
        assert_eq!(p.sensor("sensors/press-3/temp/x"), None);
        assert_eq!(p.sensor("other/press-3/temp"), None);

        let p = TopicPattern::parse("zigbee2mqtt/{device}/#", "zb.{device}").unwrap();
        assert_eq!(p.subscription(), "zigbee2mqtt/+/#");
        assert_eq!(p.sensor("zigbee2mqtt/kitchen/a/b").as_deref(), Some("zb.kitchen"));

        let p = TopicPattern::parse("tele/+/SENSOR", "line-1.power").unwrap();
        assert_eq!(p.sensor("tele/plug-7/SENSOR").as_deref(), Some("line-1.power"));
    }

    #[test]
    fn bad_patterns_say_what_to_fix() {
        assert!(TopicPattern::parse("a/#/b", "x").unwrap_err().contains("last level"));
        assert!(TopicPattern::parse("a/{m}", "{machine}").unwrap_err().contains("does not name"));
        assert!(TopicPattern::parse("a/x{m}", "x").unwrap_err().contains("mixes"));
        assert!(TopicPattern::parse("a/{m}/{m}", "{m}").unwrap_err().contains("twice"));
    }
}
