//! serde helpers that give the generated messages kata's JSON shape: a singular
//! sub-message is `null` or an object, an enum is its integer value.
//!
//! Kata's policy documents (genpolicy) and agent-ctl request bodies are written
//! against this shape, so it is part of the contract, not a style choice.

use protobuf::{EnumFull, EnumOrUnknown, MessageField};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub fn serialize_enum<E: EnumFull, S: Serializer>(e: &EnumOrUnknown<E>, s: S) -> Result<S::Ok, S::Error> {
    e.value().serialize(s)
}

pub fn deserialize_enum<'de, E: EnumFull, D: Deserializer<'de>>(d: D) -> Result<EnumOrUnknown<E>, D::Error> {
    i32::deserialize(d).map(EnumOrUnknown::from_i32)
}

pub fn serialize_message_field<M: Serialize, S: Serializer>(m: &MessageField<M>, s: S) -> Result<S::Ok, S::Error> {
    m.as_ref().serialize(s)
}

pub fn deserialize_message_field<'de, M: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<MessageField<M>, D::Error> {
    Option::<M>::deserialize(d).map(MessageField::from_option)
}
