//! Reading the tool files, `<dir>/<name>.toml`. A missing directory is no
//! tools; a file that breaks the contract stops the load with an error
//! naming the file and the field.

use std::path::Path;

use super::{CompiledTool, Result, ToolDefinition, ToolError};

/// Reads and compiles every `<dir>/<name>.toml`, in name order.
pub fn load_tool_dir(dir: &Path) -> Result<Vec<CompiledTool>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ToolError::Io { path, source }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut tools = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let invalid = |message: String| ToolError::InvalidFile {
            path: path.clone(),
            message,
        };
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let definition = ToolDefinition::from_toml(&text).map_err(|e| invalid(e.to_string()))?;
        let tool = CompiledTool::compile(&name, definition).map_err(|errors| {
            invalid(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        tools.push(tool);
    }
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tools)
}
