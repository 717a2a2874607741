//! Compiled versions by (name, version). A version is immutable, so an
//! entry never goes stale.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{CompiledPrompt, PromptDefinition, Result};

/// Compiled versions by (name, version), shared by all requests of a process.
#[derive(Default)]
pub struct PromptCache {
    compiled: RwLock<HashMap<(String, i32), Arc<CompiledPrompt>>>,
}

impl PromptCache {
    pub fn get(&self, name: &str, version: i32) -> Option<Arc<CompiledPrompt>> {
        self.compiled
            .read()
            .ok()?
            .get(&(name.to_string(), version))
            .cloned()
    }

    pub fn get_or_compile(
        &self,
        name: &str,
        version: i32,
        definition: impl FnOnce() -> PromptDefinition,
    ) -> Result<Arc<CompiledPrompt>> {
        let key = (name.to_string(), version);
        if let Ok(map) = self.compiled.read() {
            if let Some(found) = map.get(&key) {
                return Ok(found.clone());
            }
        }
        let compiled = Arc::new(CompiledPrompt::compile(name, version, definition())?);
        if let Ok(mut map) = self.compiled.write() {
            map.entry(key).or_insert_with(|| compiled.clone());
        }
        Ok(compiled)
    }
}
