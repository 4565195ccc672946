//! The collector's MQTT connection, in either protocol version: MQTT 3.1.1 (the embedded broker,
//! and any site broker) or MQTT 5 (a site broker: shared subscriptions are part of the standard
//! there, and a persistent session has an expiry instead of living forever). Both are rumqttc;
//! this module gives the collector one client, one message and one event type over the two.
//!
//! The connection is made once, in [`crate::start`]: the ingest drives its event loop and consumes
//! on it, the automation's commander publishes commands to agents through a clone of its client.

use std::time::Duration;

use rumqttc::v5::mqttbytes::{QoS as QoS5, v5 as p5};

use edgeloop_shared::secret::Secret;

use crate::config::MqttVersion;

/// How a connection is made.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub version: MqttVersion,
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Keep the session (and the broker's queue for it) while disconnected.
    pub persistent: bool,
    pub manual_acks: bool,
    pub max_in_flight: u16,
    pub channel_capacity: usize,
}

/// MQTT 5 session expiry of a persistent session: a collector away longer than this starts afresh
/// (its agents still hold everything un-acked).
const SESSION_EXPIRY_S: u32 = 24 * 3600;
/// The largest message the collector takes (a batch).
const MAX_INCOMING: usize = 64 << 20;

#[derive(Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

pub enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// A message from the broker.
#[derive(Debug, Clone)]
pub enum Message {
    V4(rumqttc::Publish),
    V5(p5::Publish),
}

/// What the collector cares about from the connection.
#[allow(clippy::large_enum_variant)] // a message is the common case, not the exception
pub enum Incoming {
    ConnAck { session_present: bool },
    SubAck,
    Publish(Message),
    Other,
}

impl Message {
    /// The topic; a topic that is not UTF-8 (MQTT requires it) reads as empty and matches nothing.
    pub fn topic(&self) -> &str {
        match self {
            Message::V4(p) => &p.topic,
            Message::V5(p) => std::str::from_utf8(&p.topic).unwrap_or(""),
        }
    }

    pub fn payload(&self) -> &[u8] {
        match self {
            Message::V4(p) => &p.payload,
            Message::V5(p) => &p.payload,
        }
    }
}

pub fn connect(o: &ConnectOptions) -> (Client, EventLoop) {
    match o.version {
        MqttVersion::V311 => {
            let mut opts = rumqttc::MqttOptions::new(o.client_id.clone(), o.host.clone(), o.port);
            opts.set_keep_alive(Duration::from_secs(15))
                .set_clean_session(!o.persistent)
                .set_manual_acks(o.manual_acks)
                .set_inflight(o.max_in_flight.max(1))
                .set_max_packet_size(MAX_INCOMING, 1 << 20);
            if let (Some(u), Some(p)) = (&o.username, &o.password) {
                opts.set_credentials(u, p.expose());
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, o.channel_capacity);
            let mut net = rumqttc::NetworkOptions::new();
            net.set_tcp_nodelay(true);
            net.set_connection_timeout(5);
            eventloop.set_network_options(net);
            (Client::V4(client), EventLoop::V4(Box::new(eventloop)))
        }
        MqttVersion::V5 => {
            let mut opts = rumqttc::v5::MqttOptions::new(o.client_id.clone(), o.host.clone(), o.port);
            opts.set_keep_alive(Duration::from_secs(15))
                .set_clean_start(!o.persistent)
                .set_session_expiry_interval(o.persistent.then_some(SESSION_EXPIRY_S))
                .set_manual_acks(o.manual_acks)
                // How many un-acked messages the broker may push to us at once.
                .set_receive_maximum(Some(o.max_in_flight.max(1)))
                .set_max_packet_size(Some(MAX_INCOMING as u32));
            if let (Some(u), Some(p)) = (&o.username, &o.password) {
                opts.set_credentials(u, p.expose());
            }
            let mut net = rumqttc::NetworkOptions::new();
            net.set_tcp_nodelay(true);
            net.set_connection_timeout(5);
            opts.set_network_options(net);
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, o.channel_capacity);
            (Client::V5(client), EventLoop::V5(Box::new(eventloop)))
        }
    }
}

impl EventLoop {
    /// The next event; an error means the connection is down (the next call reconnects).
    pub async fn poll(&mut self) -> Result<Incoming, String> {
        match self {
            EventLoop::V4(e) => match e.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => {
                    Ok(Incoming::ConnAck { session_present: c.session_present })
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => Ok(Incoming::SubAck),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => Ok(Incoming::Publish(Message::V4(p))),
                Ok(_) => Ok(Incoming::Other),
                Err(e) => Err(e.to_string()),
            },
            EventLoop::V5(e) => match e.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(c))) => {
                    Ok(Incoming::ConnAck { session_present: c.session_present })
                }
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::SubAck(_))) => Ok(Incoming::SubAck),
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::Publish(p))) => Ok(Incoming::Publish(Message::V5(p))),
                Ok(_) => Ok(Incoming::Other),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

impl EventLoop {
    /// Drops the acks still queued for the connection that just failed (rumqttc drops those it
    /// holds when the connection fails; this catches any queued since) and keeps everything else
    /// for the next connection. Acks belong to the connection their message came on.
    pub fn drop_queued_acks(&mut self) {
        match self {
            EventLoop::V4(e) => e.clean(),
            EventLoop::V5(e) => e.clean(),
        }
    }
}

impl Client {
    /// Queues a subscription without waiting (`at_least_once`: QoS 1, else QoS 0).
    pub fn try_subscribe(&self, filter: &str, at_least_once: bool) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let qos = if at_least_once { rumqttc::QoS::AtLeastOnce } else { rumqttc::QoS::AtMostOnce };
                c.try_subscribe(filter, qos).map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let qos = if at_least_once { QoS5::AtLeastOnce } else { QoS5::AtMostOnce };
                c.try_subscribe(filter, qos).map_err(|e| e.to_string())
            }
        }
    }

    /// Publishes at QoS 1.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                c.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await.map_err(|e| e.to_string())
            }
            Client::V5(c) => c.publish(topic, QoS5::AtLeastOnce, false, payload).await.map_err(|e| e.to_string()),
        }
    }

    /// Queues a QoS 1 publish without waiting; an error when the client's queue is full.
    pub fn try_publish(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Client::V4(c) => c.try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).map_err(|e| e.to_string()),
            Client::V5(c) => c.try_publish(topic, QoS5::AtLeastOnce, false, payload).map_err(|e| e.to_string()),
        }
    }

    /// Queues the broker ack of a message without waiting (manual acks: only once it is handled);
    /// an error when the client's queue is full.
    pub fn try_ack(&self, m: &Message) -> Result<(), String> {
        match (self, m) {
            (Client::V4(c), Message::V4(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            (Client::V5(c), Message::V5(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            _ => Err("a message acknowledged on a connection of the other protocol version".into()),
        }
    }
}
