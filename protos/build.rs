//! Generates the protobuf messages and async ttrpc services from `protos/*.proto`
//! into `$OUT_DIR` with the pure-Rust parser (no `protoc` needed).
//!
//! Every generated message, enum and oneof derives serde with the same JSON shape
//! as kata-containers' protocols crate (proto field names, enums as integers,
//! absent sub-messages as `null`, missing fields defaulted), so agent policies
//! and JSON request bodies written for kata work unchanged.

use std::fs;
use std::path::{Path, PathBuf};

use protobuf::descriptor::field_descriptor_proto::Type;
use protobuf::reflect::{EnumDescriptor, FieldDescriptor, MessageDescriptor, OneofDescriptor};
use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize, ProtobufCustomizeCallback};

/// The .proto files, in dependency order. `agent.proto` imports the others.
const PROTOS: &[&str] = &[
    "protos/google/protobuf/empty.proto",
    "protos/types.proto",
    "protos/oci.proto",
    "protos/csi.proto",
    "protos/agent.proto",
    "protos/health.proto",
    "protos/attestation_agent.proto",
    "protos/cdh.proto",
];

struct SerdeDerive;

const DERIVE: &str = "#[derive(::serde::Serialize, ::serde::Deserialize)]";

impl ProtobufCustomizeCallback for SerdeDerive {
    fn message(&self, _: &MessageDescriptor) -> ProtobufCustomize {
        ProtobufCustomize::default().before(&format!("{DERIVE}\n#[serde(default, deny_unknown_fields)]"))
    }

    fn enumeration(&self, _: &EnumDescriptor) -> ProtobufCustomize {
        ProtobufCustomize::default().before(DERIVE)
    }

    fn oneof(&self, _: &OneofDescriptor) -> ProtobufCustomize {
        ProtobufCustomize::default().before(DERIVE)
    }

    fn field(&self, field: &FieldDescriptor) -> ProtobufCustomize {
        let ty = field.proto().type_();
        if ty == Type::TYPE_ENUM && !field.is_repeated() {
            ProtobufCustomize::default().before(
                "#[serde(serialize_with = \"crate::serde_compat::serialize_enum\", \
                 deserialize_with = \"crate::serde_compat::deserialize_enum\")]",
            )
        } else if ty == Type::TYPE_MESSAGE && field.is_singular() {
            ProtobufCustomize::default().before(
                "#[serde(serialize_with = \"crate::serde_compat::serialize_message_field\", \
                 deserialize_with = \"crate::serde_compat::deserialize_message_field\")]",
            )
        } else {
            ProtobufCustomize::default()
        }
    }

    fn special_field(&self, _: &MessageDescriptor, _: &str) -> ProtobufCustomize {
        ProtobufCustomize::default().before("#[serde(skip)]")
    }
}

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=protos");

    let protos: Vec<&str> = PROTOS.iter().copied().filter(|p| Path::new(p).exists()).collect();
    Codegen::new()
        .out_dir(&out_dir)
        .inputs(&protos)
        .include("protos")
        .customize(Customize { async_all: true, ..Default::default() })
        .rust_protobuf()
        .rust_protobuf_customize(
            ProtobufCustomize::default().gen_mod_rs(false).generate_accessors(true).generate_getter(true),
        )
        .rust_protobuf_customize_callback(SerdeDerive)
        .run()
        .expect("ttrpc/protobuf code generation failed");

    // The generated files start with inner attributes and `//!` docs, which
    // `include!` cannot take; lib.rs supplies the allows per module instead.
    for entry in fs::read_dir(&out_dir).expect("read OUT_DIR") {
        let path = entry.expect("OUT_DIR entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).expect("read generated file");
            let cleaned: String = text
                .lines()
                .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
                // oci.proto has a message named `Box`, which shadows std's Box.
                .map(|l| l.replace("self: Box<Self>", "self: ::std::boxed::Box<Self>"))
                .collect::<Vec<_>>()
                .join("\n");
            fs::write(&path, cleaned).expect("write generated file");
        }
    }
}
