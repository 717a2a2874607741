//! A prompts directory a test may add versions to: a copy of the shipped
//! `prompts/` in a temporary directory, removed on drop.

use std::path::{Path, PathBuf};

use crate::app::prompts_dir;

pub struct TempPrompts {
    pub dir: PathBuf,
}

impl TempPrompts {
    /// A copy of `prompts/`.
    pub fn with_shipped() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "llmq-tests-prompts-{}",
            uuid::Uuid::now_v7().simple()
        ));
        copy_dir(&prompts_dir(), &dir);
        Self { dir }
    }

    /// Writes `<name>/v<version>.toml`.
    pub fn add(&self, name: &str, version: i32, toml: &str) -> &Self {
        std::fs::create_dir_all(self.dir.join(name)).expect("creating the prompt's directory");
        std::fs::write(self.dir.join(name).join(format!("v{version}.toml")), toml)
            .expect("writing the prompt file");
        self
    }
}

impl Drop for TempPrompts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating the copy");
    for entry in std::fs::read_dir(from).expect("reading prompts/") {
        let path = entry.expect("a directory entry").path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let target = to.join(name);
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copying a prompt file");
        }
    }
}
