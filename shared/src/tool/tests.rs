use serde_json::json;

use super::*;

const WEATHER: &str = r#"
description = "The weather in a city."
idempotent = true
timeout_ms = 500

[endpoint]
method = "GET"
url = "http://127.0.0.1:9/weather"

[credential]
header = "X-Api-Key"
env = "WEATHER_KEY"

[parameters]
type = "object"
required = ["city"]
additionalProperties = false

[parameters.properties.city]
type = "string"
minLength = 1
"#;

#[test]
fn a_tool_file_compiles_and_validates_arguments_by_path() {
    let d = ToolDefinition::from_toml(WEATHER).unwrap();
    assert_eq!(d.retry, ToolRetry::default());
    assert_eq!(d.max_result_bytes, DEFAULT_MAX_RESULT_BYTES);
    let t = CompiledTool::compile("weather", d).unwrap();
    assert!(t.validate_arguments(&json!({"city": "Oslo"})).is_empty());
    let errors = t.validate_arguments(&json!({"town": "Oslo"}));
    let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"arguments.city"), "{errors:?}");
    assert!(paths.contains(&"arguments.town"), "{errors:?}");
    let f = t.definition.function("weather");
    assert_eq!(f["function"]["name"], "weather");
    assert_eq!(f["function"]["parameters"]["required"], json!(["city"]));
}

#[test]
fn bad_definitions_name_their_field() {
    let e = ToolDefinition::from_toml(&WEATHER.replace("timeout_ms", "timeout")).unwrap_err();
    assert!(e.message.contains("unknown field"), "{e}");
    let bad = WEATHER
        .replace("\"GET\"", "\"FETCH\"")
        .replace("env = \"WEATHER_KEY\"", "")
        .replace("http://127.0.0.1:9/weather", "ftp://x");
    let errors =
        CompiledTool::compile("weather", ToolDefinition::from_toml(&bad).unwrap()).unwrap_err();
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["endpoint.method", "endpoint.url", "credential"]);
    let d = ToolDefinition::from_toml(WEATHER).unwrap();
    let errors = CompiledTool::compile("Bad Name", d).unwrap_err();
    assert_eq!(errors[0].field, "name");
}

#[test]
fn a_missing_tools_directory_is_no_tools() {
    let tools = load_tool_dir(std::path::Path::new("/nonexistent/llmq-tools")).unwrap();
    assert!(tools.is_empty());
}
