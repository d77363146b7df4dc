//! Configuration errors: each names the YAML path and line of the problem.

use std::fmt;

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted YAML path, e.g. `routes[2].upstream`. Empty for whole-document errors.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<u64>,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one configuration file. Never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file the errors are about, when the config came from a file.
    pub file: Option<String>,
    /// The problems, in document order.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// A single error that is not about any particular YAML node.
    pub fn single(file: Option<String>, message: impl Into<String>) -> Self {
        ConfigErrors {
            file,
            errors: vec![ConfigError {
                path: String::new(),
                line: None,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{} error{} in {}:",
            n,
            if n == 1 { "" } else { "s" },
            self.file.as_deref().unwrap_or("configuration")
        )?;
        for e in &self.errors {
            let file = self.file.as_deref().unwrap_or("config");
            match e.line {
                Some(line) => write!(f, "  {file}:{line}: ")?,
                None => write!(f, "  {file}: ")?,
            }
            if e.path.is_empty() {
                writeln!(f, "{}", e.message)?;
            } else {
                writeln!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}
