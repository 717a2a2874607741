//! Reading the prompt files, `<dir>/<name>/v<N>.toml`, one per version.
//! A file that breaks the contract stops the load with an error naming
//! the file and the field (`prompts/x/v2.toml is not valid: params.top_p: ...`).

use std::path::{Path, PathBuf};

use super::{validate_name, CompiledPrompt, PromptDefinition, PromptError, Result};

/// A prompt version file found on disk.
#[derive(Clone, Debug)]
pub struct PromptFile {
    pub name: String,
    pub version: i32,
    pub definition: PromptDefinition,
    pub path: PathBuf,
}

/// Reads every `<dir>/<name>/v<N>.toml`, checking that each compiles.
pub fn load_prompt_dir(dir: &Path) -> Result<Vec<PromptFile>> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PromptError + '_ {
        move |source| PromptError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let prompt_dir = entry.map_err(io(dir))?.path();
        if !prompt_dir.is_dir() {
            continue;
        }
        let Some(name) = prompt_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        for file in std::fs::read_dir(&prompt_dir).map_err(io(&prompt_dir))? {
            let path = file.map_err(io(&prompt_dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let invalid = |message: String| PromptError::InvalidFile {
                path: path.clone(),
                message,
            };
            let version = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix('v'))
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| invalid("file name must be v<N>.toml with N > 0".into()))?;
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let definition =
                PromptDefinition::from_toml(&text).map_err(|e| invalid(e.to_string()))?;
            validate_name(&name).map_err(invalid)?;
            // The whole contract (fields, templates, schemas, examples),
            // reported against the file.
            CompiledPrompt::compile(&name, version, definition.clone()).map_err(|e| match e {
                PromptError::InvalidDefinition { message, .. } => invalid(message),
                other => other,
            })?;
            files.push(PromptFile {
                name: name.clone(),
                version,
                definition,
                path,
            });
        }
    }
    files.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
    Ok(files)
}
