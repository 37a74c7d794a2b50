//! Protobuf: a `.proto` file (as text, or as the base64 `FileDescriptorProto` that Confluent's
//! serializers register), compiled with protox together with the files it imports; the message
//! indexes of the wire format pick the message type, prost-reflect decodes it into Protobuf's JSON
//! mapping (with the `.proto` field names) and encodes JSON back.

use std::collections::HashMap;

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FileDescriptor, MessageDescriptor, SerializeOptions,
};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

/// The name a registry schema's main file is compiled under when its text does not say.
const MAIN: &str = "sluice-registry-schema.proto";

/// A compiled `.proto` file.
#[derive(Debug)]
pub struct Protobuf {
    file: FileDescriptor,
}

/// Files by name: the main schema's imports.
struct Files(HashMap<String, File>);

impl FileResolver for Files {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| protox::Error::file_not_found(name))
    }
}

/// `text` as a protox file named `name`: `.proto` source, or a base64 `FileDescriptorProto`.
fn file(name: &str, text: &str) -> Result<File, String> {
    match File::from_source(name, text) {
        Ok(file) => Ok(file),
        Err(source_error) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| format!("not a .proto file: {source_error}"))?;
            let mut file = File::decode_file_descriptor_proto(&bytes[..])
                .map_err(|e| format!("neither .proto text nor a FileDescriptorProto: {e}"))?;
            if file.name().is_empty() {
                let mut descriptor = file.file_descriptor_proto().clone();
                descriptor.name = Some(name.to_owned());
                file = File::from_file_descriptor_proto(descriptor);
            }
            Ok(file)
        }
    }
}

impl Protobuf {
    /// Compiles `text` with its imports `references` (import name, text).
    pub fn parse(text: &str, references: &[(String, String)]) -> Result<Protobuf, String> {
        let main = file(MAIN, text)?;
        let main_name = main.name().to_owned();
        let mut files = HashMap::new();
        for (name, text) in references {
            files.insert(
                name.clone(),
                file(name, text).map_err(|e| format!("{name}: {e}"))?,
            );
        }
        files.insert(main_name.clone(), main);
        let mut resolver = ChainFileResolver::new();
        resolver.add(Files(files));
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler
            .open_file(&main_name)
            .map_err(|e| format!("the .proto does not compile: {e}"))?;
        let file = compiler
            .descriptor_pool()
            .get_file_by_name(&main_name)
            .ok_or("the compiled .proto is missing")?;
        if file.messages().len() == 0 {
            return Err("the .proto defines no message".into());
        }
        Ok(Protobuf { file })
    }

    /// The message at `indexes` (a top-level message, then nested ones).
    pub fn message_at(&self, indexes: &[i32]) -> Result<MessageDescriptor, String> {
        let missing = || format!("message indexes {indexes:?} name no message of the schema");
        let (first, rest) = indexes.split_first().ok_or_else(missing)?;
        let mut message = usize::try_from(*first)
            .ok()
            .and_then(|i| self.file.messages().nth(i))
            .ok_or_else(missing)?;
        for i in rest {
            message = usize::try_from(*i)
                .ok()
                .and_then(|i| message.child_messages().nth(i))
                .ok_or_else(missing)?;
        }
        Ok(message)
    }

    /// The message named `name` (a full name, or one relative to the file's package); the file's
    /// first message when `None`. With its indexes.
    pub fn message(&self, name: Option<&str>) -> Result<(MessageDescriptor, Vec<i32>), String> {
        let Some(name) = name else {
            return Ok((self.message_at(&[0])?, vec![0]));
        };
        let package = self.file.package_name();
        let full = if package.is_empty() || name.starts_with(&format!("{package}.")) {
            name.to_owned()
        } else {
            format!("{package}.{name}")
        };
        let mut path = Vec::new();
        fn find(
            messages: impl Iterator<Item = MessageDescriptor>,
            full: &str,
            path: &mut Vec<i32>,
        ) -> Option<MessageDescriptor> {
            for (i, m) in messages.enumerate() {
                path.push(i as i32);
                if m.full_name() == full {
                    return Some(m);
                }
                if let Some(found) = find(m.child_messages(), full, path) {
                    return Some(found);
                }
                path.pop();
            }
            None
        }
        let message = find(self.file.messages(), &full, &mut path).ok_or_else(|| {
            let names: Vec<String> = self
                .file
                .messages()
                .map(|m| m.full_name().to_owned())
                .collect();
            format!(
                "message `{name}` is not in the schema (it has {})",
                names.join(", ")
            )
        })?;
        Ok((message, path))
    }

    /// The first message's full name (the record name of the subject naming strategies).
    pub fn record_name(&self) -> Option<String> {
        self.file
            .messages()
            .next()
            .map(|m| m.full_name().to_owned())
    }
}

const TO_JSON: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .stringify_64_bit_integers(false)
    .skip_default_fields(false);

/// `data`, a `message`, as JSON.
pub fn decode(message: &MessageDescriptor, data: &[u8]) -> Result<Vec<u8>, String> {
    let decoded = DynamicMessage::decode(message.clone(), data)
        .map_err(|e| format!("not a {} message: {e}", message.full_name()))?;
    let mut out = Vec::with_capacity(data.len() * 2);
    decoded
        .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &TO_JSON)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Appends the JSON document `json` as a `message` to `out`.
pub fn encode(message: &MessageDescriptor, json: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let decoded = DynamicMessage::deserialize_with_options(
        message.clone(),
        &mut de,
        &DeserializeOptions::new(),
    )
    .and_then(|m| de.end().map(|()| m))
    .map_err(|e| format!("does not fit {}: {e}", message.full_name()))?;
    decoded.encode(out).map_err(|e| e.to_string())
}

/// Reads the wire format's message indexes from the front of `data`: a zigzag varint count, then
/// that many zigzag varint indexes; a count of 0 stands for `[0]`.
pub fn read_indexes(data: &mut &[u8]) -> Result<Vec<i32>, String> {
    let count = read_zigzag(data)?;
    if count == 0 {
        return Ok(vec![0]);
    }
    if !(1..=100).contains(&count) {
        return Err(format!(
            "{count} message indexes: not the Protobuf wire format"
        ));
    }
    (0..count).map(|_| read_zigzag(data)).collect()
}

/// Writes `indexes` as [`read_indexes`] reads them.
pub fn write_indexes(indexes: &[i32], out: &mut Vec<u8>) {
    if indexes == [0] {
        out.push(0);
        return;
    }
    write_zigzag(indexes.len() as i32, out);
    for i in indexes {
        write_zigzag(*i, out);
    }
}

fn read_zigzag(data: &mut &[u8]) -> Result<i32, String> {
    let raw = prost::encoding::decode_varint(data).map_err(|_| "truncated message indexes")?;
    let raw = u32::try_from(raw).map_err(|_| "message index out of range")?;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

fn write_zigzag(v: i32, out: &mut Vec<u8>) {
    prost::encoding::encode_varint(((v << 1) ^ (v >> 31)) as u32 as u64, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO: &str = r#"syntax = "proto3";
package rides.v1;
import "google/protobuf/timestamp.proto";
message Booking {
  int64 id = 1;
  string city = 2;
  google.protobuf.Timestamp at = 3;
  message Leg { string from = 1; }
  repeated Leg legs = 4;
}
message Payment { string booking = 1; }
"#;

    #[test]
    fn indexes_round_trip() {
        for indexes in [vec![0], vec![1], vec![0, 2], vec![3, 0, 1]] {
            let mut out = Vec::new();
            write_indexes(&indexes, &mut out);
            let mut data = &out[..];
            assert_eq!(read_indexes(&mut data).unwrap(), indexes);
            assert!(data.is_empty());
        }
        let mut zero = Vec::new();
        write_indexes(&[0], &mut zero);
        assert_eq!(zero, [0]);
    }

    #[test]
    fn messages_are_found_by_index_and_name() {
        let proto = Protobuf::parse(PROTO, &[]).unwrap();
        assert_eq!(proto.record_name().as_deref(), Some("rides.v1.Booking"));
        assert_eq!(
            proto.message_at(&[1]).unwrap().full_name(),
            "rides.v1.Payment"
        );
        assert_eq!(
            proto.message_at(&[0, 0]).unwrap().full_name(),
            "rides.v1.Booking.Leg"
        );
        let (m, path) = proto.message(Some("Booking.Leg")).unwrap();
        assert_eq!((m.full_name(), path), ("rides.v1.Booking.Leg", vec![0, 0]));
        assert!(
            proto
                .message(Some("Nope"))
                .unwrap_err()
                .contains("rides.v1.Booking")
        );
        assert!(proto.message_at(&[5]).is_err());
    }

    #[test]
    fn a_message_round_trips_through_json() {
        let proto = Protobuf::parse(PROTO, &[]).unwrap();
        let (booking, _) = proto.message(None).unwrap();
        let mut data = Vec::new();
        encode(
            &booking,
            br#"{"id": 7, "city": "Jakarta", "at": "2026-12-07T08:00:00Z", "legs": [{"from": "A"}]}"#,
            &mut data,
        )
        .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&decode(&booking, &data).unwrap()).unwrap();
        assert_eq!(json["id"], 7);
        assert_eq!(json["at"], "2026-12-07T08:00:00Z");
        assert_eq!(json["legs"][0]["from"], "A");
        assert!(encode(&booking, br#"{"id": "x"}"#, &mut Vec::new()).is_err());
        assert!(encode(&booking, br#"{"nope": 1}"#, &mut Vec::new()).is_err());
        assert!(decode(&booking, &[0xff, 0xff]).is_err());
    }

    #[test]
    fn a_base64_descriptor_is_read_like_text() {
        let proto = Protobuf::parse(PROTO, &[]).unwrap();
        let mut descriptor = proto.file.file_descriptor_proto().clone();
        descriptor.name = Some("rides.proto".into());
        let text = base64::engine::general_purpose::STANDARD.encode(descriptor.encode_to_vec());
        let again = Protobuf::parse(&text, &[]).unwrap();
        assert_eq!(again.record_name().as_deref(), Some("rides.v1.Booking"));
    }
}
