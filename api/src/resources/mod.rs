//! The typed JSON of every route: one module per resource, each struct `Serialize` +
//! `utoipa::ToSchema`, so `/openapi.json` describes exactly what the handlers send.
//!
//! Resources are camelCase, as the `/api` routes speak. The seed-002 routes (`/chat/...`)
//! speak snake_case about the same model: they send [`Snake`]`<T>` of the same resource type,
//! which renames the fields (and the schema's properties) to snake_case, with the few renames
//! that seed makes (a message's `chatId` is its `conversation_id`).

pub mod ai;
pub mod billing;
pub mod chats;
pub mod documents;
pub mod operations;
pub mod providers;
pub mod settings;
pub mod users;

use serde::{Serialize, Serializer};
use std::borrow::Cow;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Object, Schema};
use utoipa::{PartialSchema, ToSchema};

/// A resource the seed-002 routes also show, in snake_case.
pub trait SnakeCase {
    /// Fields whose snake_case name is not their camelCase name converted:
    /// (camelCase name, snake_case name).
    const RENAMES: &'static [(&'static str, &'static str)] = &[];
}

/// `T`'s snake_case name for the camelCase field `name`.
fn snake_name<T: SnakeCase>(name: &str) -> String {
    if let Some((_, to)) = T::RENAMES.iter().find(|(from, _)| *from == name) {
        return (*to).to_owned();
    }
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A resource as the seed-002 routes show it: the same fields, in snake_case.
#[derive(Debug, Clone, PartialEq)]
pub struct Snake<T>(pub T);

impl<T: Serialize + SnakeCase> Serialize for Snake<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        match serde_json::to_value(&self.0).map_err(S::Error::custom)? {
            serde_json::Value::Object(fields) => fields
                .into_iter()
                .map(|(k, v)| (snake_name::<T>(&k), v))
                .collect::<serde_json::Map<_, _>>()
                .serialize(serializer),
            other => other.serialize(serializer),
        }
    }
}

impl<T: ToSchema + SnakeCase> PartialSchema for Snake<T> {
    fn schema() -> RefOr<Schema> {
        match T::schema() {
            RefOr::T(Schema::Object(object)) => {
                let mut snake: Object = object.clone();
                snake.properties = object
                    .properties
                    .into_iter()
                    .map(|(k, v)| (snake_name::<T>(&k), v))
                    .collect();
                snake.required = object.required.iter().map(|k| snake_name::<T>(k)).collect();
                RefOr::T(Schema::Object(snake))
            }
            other => other,
        }
    }
}

impl<T: ToSchema + SnakeCase> ToSchema for Snake<T> {
    fn name() -> Cow<'static, str> {
        Cow::Owned(format!("{}Snake", T::name()))
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        T::schemas(schemas);
    }
}

/// For optional fields that may be left out but not sent as `null` (their schema says so):
/// `#[serde(default, deserialize_with = "not_null")]`. A `null` is refused like any other value
/// of the wrong type.
pub fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_required(o: &Object, name: &str) -> bool {
        o.required.iter().any(|r| r == name)
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "camelCase")]
    struct Sample {
        id: u32,
        chat_id: u32,
        created_at: u32,
    }

    impl SnakeCase for Sample {
        const RENAMES: &'static [(&'static str, &'static str)] = &[("chatId", "conversation_id")];
    }

    #[test]
    fn snake_renames_fields_and_schema_alike() {
        let s = Snake(Sample {
            id: 1,
            chat_id: 2,
            created_at: 3,
        });
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({ "id": 1, "conversation_id": 2, "created_at": 3 })
        );
        let RefOr::T(Schema::Object(o)) = Snake::<Sample>::schema() else {
            panic!("an object schema");
        };
        let names: Vec<&String> = o.properties.keys().collect();
        assert_eq!(names, ["conversation_id", "created_at", "id"]);
        assert!(is_required(&o, "conversation_id"));
        assert_eq!(Snake::<Sample>::name(), "SampleSnake");
    }
}
