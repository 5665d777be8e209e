//! Turning policy files into a validated Cedar policy set: splitting files into policies (so every
//! problem has a file, line and column), reading `@id` annotations, strict validation against the
//! schema, and the set's SHA-256. Shared by the engine and by `firstkey policy check`.
//!
//! Positions: cedar reports precise spans only through `miette`, which this crate does not depend
//! on, so a problem is located at the start of the policy it is in (for schema errors, at the
//! schema file). Messages are cedar's own.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use cedar_policy::{Effect, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};

/// Name under which the schema takes part in the set's hash, whatever file it came from.
pub(crate) const SCHEMA_FILE: &str = "schema.cedarschema";

/// Domain separator at the start of the hashed canonical form; bump when the form changes.
const HASH_DOMAIN: &[u8] = b"firstkey-policy-set-v1\n";

/// A line and column in a file, both counted from 1; columns count characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1, in characters.
    pub column: usize,
}

/// One problem found in a policy set, fit to show to the municipal admin who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file's name (relative to the policy directory).
    pub file: String,
    /// Where in the file, when known: the start of the policy concerned.
    pub location: Option<Location>,
    /// The `@id` of the policy concerned, when known.
    pub policy_id: Option<String>,
    /// What is wrong (cedar's message).
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(at) = self.location {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        f.write_str(": ")?;
        if let Some(id) = &self.policy_id {
            write!(f, "policy `{id}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Where the schema used for a check came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaOrigin {
    /// The directory's own `schema.cedarschema`.
    Directory,
    /// The schema shipped with firstkey (the directory has none).
    Shipped,
}

/// What `firstkey policy check` reports for a valid set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Number of `*.cedar` files.
    pub files: usize,
    /// Number of `permit` policies.
    pub permits: usize,
    /// Number of `forbid` policies.
    pub forbids: usize,
    /// The `@id`s of all policies, in file order.
    pub policy_ids: Vec<String>,
    /// Where the schema came from.
    pub schema: SchemaOrigin,
    /// Validator warnings (for example a policy that can never apply); they do not fail the check.
    pub warnings: Vec<Diagnostic>,
    /// SHA-256 of the set, as recorded with every decision made under it.
    pub policy_set_hash: [u8; 32],
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        let schema = match self.schema {
            SchemaOrigin::Directory => "the directory's schema",
            SchemaOrigin::Shipped => "the shipped schema",
        };
        writeln!(
            f,
            "ok: {} policies ({} permit, {} forbid) in {} files, valid against {schema}; {} warnings",
            self.permits + self.forbids,
            self.permits,
            self.forbids,
            self.files,
            self.warnings.len(),
        )?;
        write!(
            f,
            "policy set sha256: {}",
            hex::encode(self.policy_set_hash)
        )
    }
}

/// A file of the set: its name (no directory) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceFile {
    pub(crate) name: String,
    pub(crate) text: String,
}

impl SourceFile {
    pub(crate) fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// A policy set that parsed and validated.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub(crate) schema: Schema,
    pub(crate) policies: PolicySet,
    pub(crate) policy_ids: Vec<String>,
    pub(crate) permits: usize,
    pub(crate) forbids: usize,
    pub(crate) warnings: Vec<Diagnostic>,
    pub(crate) hash: [u8; 32],
}

/// Reads `dir`'s `*.cedar` files and its schema (or `shipped_schema` when it has none).
pub(crate) fn read_dir(
    dir: &Path,
    shipped_schema: &str,
) -> Result<(SourceFile, Vec<SourceFile>, SchemaOrigin), Vec<Diagnostic>> {
    let io_problem = |file: &Path, e: std::io::Error| Diagnostic {
        file: file.display().to_string(),
        location: None,
        policy_id: None,
        message: e.to_string(),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| vec![io_problem(dir, e)])?;
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(e) => {
                problems.push(io_problem(dir, e));
                continue;
            }
        };
        if path.extension().is_none_or(|ext| ext != "cedar") || !path.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push(SourceFile::new(name, text)),
            Err(e) => problems.push(io_problem(&path, e)),
        }
    }
    let schema_path = dir.join(SCHEMA_FILE);
    let (schema, origin) = match std::fs::read_to_string(&schema_path) {
        Ok(text) => (SourceFile::new(SCHEMA_FILE, text), SchemaOrigin::Directory),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            SourceFile::new(SCHEMA_FILE, shipped_schema),
            SchemaOrigin::Shipped,
        ),
        Err(e) => {
            problems.push(io_problem(&schema_path, e));
            (SourceFile::new(SCHEMA_FILE, ""), SchemaOrigin::Directory)
        }
    };
    if files.is_empty() && problems.is_empty() {
        problems.push(Diagnostic {
            file: dir.display().to_string(),
            location: None,
            policy_id: None,
            message: "no *.cedar policy files in this directory".to_owned(),
        });
    }
    if problems.is_empty() {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((schema, files, origin))
    } else {
        Err(problems)
    }
}

/// Parses, names and validates a policy set.
///
/// Every policy must carry an `@id("…")` annotation, unique in the set; it becomes the policy's
/// id, so decisions name policies by it. Templates are not supported.
pub(crate) fn compile(
    schema: &SourceFile,
    files: &[SourceFile],
) -> Result<Compiled, Vec<Diagnostic>> {
    let mut problems = Vec::new();
    let mut warnings: Vec<Diagnostic> = Vec::new();
    let parsed_schema = match Schema::from_cedarschema_str(&schema.text) {
        Ok((parsed, schema_warnings)) => {
            warnings.extend(schema_warnings.map(|w| Diagnostic {
                file: schema.name.clone(),
                location: None,
                policy_id: None,
                message: w.to_string(),
            }));
            Some(parsed)
        }
        Err(e) => {
            problems.push(Diagnostic {
                file: schema.name.clone(),
                location: None,
                policy_id: None,
                message: format!("schema: {e}"),
            });
            None
        }
    };

    let mut policies = PolicySet::new();
    let mut policy_ids = Vec::new();
    // Where each policy came from: file, its location, and its byte offset in the file (Cedar's
    // error spans are relative to the policy's own text).
    let mut origin: HashMap<String, (String, Location, usize, String)> = HashMap::new();
    let (mut permits, mut forbids) = (0, 0);
    for file in files {
        for chunk in split_policies(&file.text) {
            let at = location(&file.text, chunk.start);
            let problem = |policy_id: Option<String>, message: String| Diagnostic {
                file: file.name.clone(),
                location: Some(at),
                policy_id,
                message,
            };
            let policy = match Policy::parse(None, chunk.text) {
                Ok(policy) => policy,
                Err(errors) => {
                    problems.extend(errors.iter().map(|e| Diagnostic {
                        // The exact token when Cedar labels one, else the policy's start.
                        location: Some(first_label(e).map_or(at, |offset| {
                            location(&file.text, chunk.start.saturating_add(offset))
                        })),
                        ..problem(None, e.to_string())
                    }));
                    continue;
                }
            };
            let Some(id) = policy.annotation("id").map(str::to_owned) else {
                problems.push(problem(
                    None,
                    "policy has no @id(\"…\") annotation".to_owned(),
                ));
                continue;
            };
            if id.is_empty() {
                problems.push(problem(None, "policy has an empty @id".to_owned()));
                continue;
            }
            if let Some((other_file, other_at, _, _)) = origin.get(&id) {
                problems.push(problem(
                    Some(id.clone()),
                    format!(
                        "duplicate @id, first used at {other_file}:{}:{}",
                        other_at.line, other_at.column
                    ),
                ));
                continue;
            }
            let policy = policy.new_id(PolicyId::new(&id));
            match policy.effect() {
                Effect::Permit => permits += 1,
                Effect::Forbid => forbids += 1,
            }
            if let Err(e) = policies.add(policy) {
                problems.push(problem(Some(id.clone()), e.to_string()));
                continue;
            }
            origin.insert(
                id.clone(),
                (file.name.clone(), at, chunk.start, file.text.clone()),
            );
            policy_ids.push(id);
        }
    }

    let Some(parsed_schema) = parsed_schema else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }

    let located = |id: &PolicyId, message: String, offset: Option<usize>| {
        let id = id.to_string();
        // Cedar starts validator messages with the policy id, which the diagnostic already carries.
        let message = message
            .strip_prefix(&format!("for policy `{id}`, "))
            .map_or(message.clone(), str::to_owned);
        let (file, at) = origin
            .get(&id)
            .map_or((None, None), |(f, at, start, text)| {
                let exact = offset.map(|o| location(text, start.saturating_add(o)));
                (Some(f.clone()), Some(exact.unwrap_or(*at)))
            });
        Diagnostic {
            file: file.unwrap_or_else(|| "?".to_owned()),
            location: at,
            policy_id: Some(id),
            message,
        }
    };
    let result = Validator::new(parsed_schema.clone()).validate(&policies, ValidationMode::Strict);
    let errors: Vec<Diagnostic> = result
        .validation_errors()
        .map(|e| located(e.policy_id(), e.to_string(), first_label(e)))
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    warnings.extend(
        result
            .validation_warnings()
            .map(|w| located(w.policy_id(), w.to_string(), first_label(w))),
    );

    Ok(Compiled {
        schema: parsed_schema,
        policies,
        policy_ids,
        permits,
        forbids,
        warnings,
        hash: set_hash(schema, files),
    })
}

/// SHA-256 over the canonical form of the set: a domain string, then for each file sorted by name
/// (the schema counting as `schema.cedarschema`), the name's and the text's UTF-8 bytes, each
/// preceded by its length as a big-endian u64. Lengths make the form unambiguous.
pub(crate) fn set_hash(schema: &SourceFile, files: &[SourceFile]) -> [u8; 32] {
    let mut all: Vec<(&str, &str)> = files
        .iter()
        .map(|f| (f.name.as_str(), f.text.as_str()))
        .collect();
    all.push((SCHEMA_FILE, schema.text.as_str()));
    all.sort_unstable();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(HASH_DOMAIN);
    for (name, text) in all {
        for part in [name.as_bytes(), text.as_bytes()] {
            // usize → u64 is lossless on every supported target.
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(ctx.finish().as_ref());
    hash
}

/// One policy's text within a file, from its first significant character through its `;`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk<'a> {
    pub(crate) start: usize,
    pub(crate) text: &'a str,
}

/// Splits a policy file at each top-level `;` (outside strings and `//` comments). A policy
/// statement in Cedar contains no other `;`, so each chunk is one policy (or one broken one,
/// which then fails to parse where it is). Whitespace- or comment-only chunks are dropped.
pub(crate) fn split_policies(text: &str) -> Vec<Chunk<'_>> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum State {
        Code,
        Str,
        StrEscape,
        Comment,
    }
    let mut chunks = Vec::new();
    let mut state = State::Code;
    let mut first_significant: Option<usize> = None;
    let mut prev_slash = false;
    for (i, c) in text.char_indices() {
        state = match state {
            State::Comment => {
                if c == '\n' {
                    State::Code
                } else {
                    State::Comment
                }
            }
            State::StrEscape => State::Str,
            State::Str => match c {
                '\\' => State::StrEscape,
                '"' => State::Code,
                _ => State::Str,
            },
            State::Code => {
                let mut next = State::Code;
                if c == '/' && prev_slash {
                    prev_slash = false;
                    // The first '/' was taken as significant; undo that if it started the chunk.
                    if first_significant == Some(i - 1) {
                        first_significant = None;
                    }
                    next = State::Comment;
                } else {
                    prev_slash = c == '/';
                    if !c.is_whitespace() && first_significant.is_none() {
                        first_significant = Some(i);
                    }
                    if c == '"' {
                        next = State::Str;
                    } else if c == ';'
                        && let Some(start) = first_significant.take()
                    {
                        chunks.push(Chunk {
                            start,
                            text: text.get(start..=i).unwrap_or_default(),
                        });
                    }
                }
                next
            }
        };
        if state != State::Code {
            prev_slash = false;
        }
    }
    if let Some(start) = first_significant {
        chunks.push(Chunk {
            start,
            text: text.get(start..).unwrap_or_default(),
        });
    }
    chunks
}

/// The line and column (from 1, columns in characters) of byte `offset` in `text`.
/// Byte offset of the first source span Cedar attached to an error, if any.
fn first_label(e: &dyn miette::Diagnostic) -> Option<usize> {
    e.labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset())
}

pub(crate) fn location(text: &str, offset: usize) -> Location {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    Location { line, column }
}
