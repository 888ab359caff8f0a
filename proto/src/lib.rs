//! The leak tracer's gRPC API, package `tracer.v1`. Generated code only; never edited by hand.

/// Version 1 of the API.
pub mod v1 {
    #![allow(
        clippy::all,
        clippy::allow_attributes_without_reason,
        reason = "generated code"
    )]
    tonic::include_proto!("tracer.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tracer_descriptor");
