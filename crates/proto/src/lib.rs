//! The protobuf contracts of the mesh, generated at build time from `proto/`.

#![allow(unreachable_pub, missing_debug_implementations, clippy::all)]

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("mp3converter.auth.v1");
    }
}

pub mod media {
    pub mod v1 {
        tonic::include_proto!("mp3converter.media.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("mp3converter.events.v1");
    }
}

/// Internal: converters following an upload on the gateway that receives it.
pub mod upload {
    pub mod v1 {
        tonic::include_proto!("mp3converter.upload.v1");
    }
}

pub mod webhooks {
    pub mod v1 {
        tonic::include_proto!("mp3converter.webhooks.v1");
    }
}

/// Encoded `FileDescriptorSet` of every contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mp3converter_descriptor.bin"));

/// The AMQP `type` property of an event: the full name of its message.
pub trait EventType: prost::Message + Default {
    const TYPE: &'static str;
}

impl EventType for events::v1::VideoUploaded {
    const TYPE: &'static str = "mp3converter.events.v1.VideoUploaded";
}
impl EventType for events::v1::UploadStarted {
    const TYPE: &'static str = "mp3converter.events.v1.UploadStarted";
}
impl EventType for events::v1::Mp3Ready {
    const TYPE: &'static str = "mp3converter.events.v1.Mp3Ready";
}
impl EventType for events::v1::ConversionFailed {
    const TYPE: &'static str = "mp3converter.events.v1.ConversionFailed";
}
impl EventType for events::v1::UserNotified {
    const TYPE: &'static str = "mp3converter.events.v1.UserNotified";
}
impl EventType for events::v1::WebhookDue {
    const TYPE: &'static str = "mp3converter.events.v1.WebhookDue";
}
impl EventType for events::v1::JobChanged {
    const TYPE: &'static str = "mp3converter.events.v1.JobChanged";
}
