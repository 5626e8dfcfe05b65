//! Field errors shaped like k8s.io/apimachinery's `field.Error`: a type ("Invalid value",
//! "Required value", "Too many", ...), the field path, the bad value and a detail. Their
//! text is what the API server puts in a 422 `Invalid` Status, item by item, and what
//! kubectl prints:
//!
//! ```text
//! spec.fallback: Too many: 5: must have at most 4 items
//! spec: Invalid value: "object": fallback may not repeat mode
//! ```

use serde_json::{json, Value};

/// `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorType {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    TooLong,
    TooMany,
    Forbidden,
    Internal,
}

impl FieldErrorType {
    /// The text (`ErrorType.String()`).
    pub fn text(self) -> &'static str {
        match self {
            FieldErrorType::Required => "Required value",
            FieldErrorType::Invalid => "Invalid value",
            FieldErrorType::NotSupported => "Unsupported value",
            FieldErrorType::Duplicate => "Duplicate value",
            FieldErrorType::TooLong => "Too long",
            FieldErrorType::TooMany => "Too many",
            FieldErrorType::Forbidden => "Forbidden",
            FieldErrorType::Internal => "Internal error",
        }
    }

    /// The `reason` of a Status cause (`metav1.CauseType`).
    pub fn reason(self) -> &'static str {
        match self {
            FieldErrorType::Required => "FieldValueRequired",
            FieldErrorType::Invalid => "FieldValueInvalid",
            FieldErrorType::NotSupported => "FieldValueNotSupported",
            FieldErrorType::Duplicate => "FieldValueDuplicate",
            FieldErrorType::TooLong => "FieldValueTooLong",
            FieldErrorType::TooMany => "FieldValueTooMany",
            FieldErrorType::Forbidden => "FieldValueForbidden",
            FieldErrorType::Internal => "InternalError",
        }
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub type_: FieldErrorType,
    /// JSON path, `spec.fallback[2]`.
    pub field: String,
    /// The offending value; `None` omits it (as `field.Required` and `Forbidden` do).
    pub value: Option<Value>,
    pub detail: String,
}

impl FieldError {
    fn new(type_: FieldErrorType, field: &str, value: Option<Value>, detail: String) -> Self {
        FieldError {
            type_,
            field: field.to_string(),
            value,
            detail,
        }
    }
    pub fn required(field: &str) -> Self {
        Self::new(FieldErrorType::Required, field, None, String::new())
    }
    pub fn invalid(field: &str, value: Value, detail: impl Into<String>) -> Self {
        Self::new(FieldErrorType::Invalid, field, Some(value), detail.into())
    }
    pub fn not_supported(field: &str, value: Value, allowed: &[Value]) -> Self {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        let detail = format!("supported values: {}", list.join(", "));
        Self::new(FieldErrorType::NotSupported, field, Some(value), detail)
    }
    pub fn duplicate(field: &str, value: Value) -> Self {
        Self::new(FieldErrorType::Duplicate, field, Some(value), String::new())
    }
    pub fn too_long(field: &str, max: u64) -> Self {
        let detail = format!("may not be more than {max} bytes");
        Self::new(FieldErrorType::TooLong, field, None, detail)
    }
    pub fn too_many(field: &str, actual: usize, max: u64) -> Self {
        let detail = format!("must have at most {max} items");
        Self::new(FieldErrorType::TooMany, field, Some(json!(actual)), detail)
    }
    pub fn forbidden(field: &str, detail: impl Into<String>) -> Self {
        Self::new(FieldErrorType::Forbidden, field, None, detail.into())
    }

    /// `ErrorBody()`: the text after the field.
    pub fn body(&self) -> String {
        let mut s = self.type_.text().to_string();
        if let Some(v) = &self.value {
            let shown = match v {
                Value::String(s) => format!("{s:?}"),
                other => other.to_string(),
            };
            s = format!("{s}: {shown}");
        }
        if !self.detail.is_empty() {
            s = format!("{s}: {}", self.detail);
        }
        s
    }

    /// The Status `cause` for it.
    pub fn cause(&self) -> Value {
        json!({"reason": self.type_.reason(), "message": self.body(), "field": self.field})
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.body())
        } else {
            write!(f, "{}: {}", self.field, self.body())
        }
    }
}

/// An `ErrorList` as one message: the item alone, or `[a, b]`.
pub fn aggregate(errors: &[FieldError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_match_apimachinery() {
        assert_eq!(
            FieldError::too_many("spec.fallback", 5, 4).to_string(),
            "spec.fallback: Too many: 5: must have at most 4 items"
        );
        assert_eq!(
            FieldError::invalid("spec", json!("object"), "fallback may not repeat mode")
                .to_string(),
            "spec: Invalid value: \"object\": fallback may not repeat mode"
        );
        assert_eq!(
            FieldError::required("spec.mode").to_string(),
            "spec.mode: Required value"
        );
        assert_eq!(
            FieldError::not_supported("spec.mode", json!("x"), &[json!("a"), json!("b")])
                .to_string(),
            "spec.mode: Unsupported value: \"x\": supported values: \"a\", \"b\""
        );
    }
}
