//! Message templates (contract §7): Handlebars in strict mode, one file per channel × action × locale,
//! looked up with locale fallback (`es-AR` → `es` → default locale).
//!
//! Every source, whether from `templates.dir` or the admin API, is untrusted: it is parsed on a thread
//! with a large stack (a deeply nested source cannot overflow the process' stack), must nest at most
//! [`MAX_DEPTH`] levels, may not use partials, decorators or helpers that write anywhere, and is rendered
//! once with sample variables before it is used.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use handlebars::Handlebars;
use handlebars::template::{Parameter, Template, TemplateElement};
use serde_json::{Map, Value, json};

use crate::job::{Action, Channel, Job, Locale};

/// Marker that `{{pause}}` leaves in rendered voice text; the voice provider turns it into a pause.
/// Control characters cannot come from a job (they are rejected there), so it cannot be forged.
pub const PAUSE: &str = "\u{1}pause\u{1}";

/// Largest template source, from the directory or the admin API.
pub const MAX_SOURCE: usize = 64 * 1024;
/// Deepest nesting of blocks, `else if` chains and subexpressions. Rendering recurses once per level on
/// whatever thread renders a job, so the bound keeps it far from the end of a 2 MiB worker stack.
pub const MAX_DEPTH: usize = 24;
/// Most `{{` a source may hold. It bounds how deep blocks can nest before the parser sees them, which
/// is what makes a hostile source slow to parse (2,000 nested blocks took seconds).
pub const MAX_EXPRESSIONS: usize = 512;
/// Stack of the thread that parses a source: handlebars' parser recurses once per nesting level before
/// [`MAX_DEPTH`] can be checked, and a [`MAX_SOURCE`] source nests at most a few thousand levels.
const PARSE_STACK: usize = 256 << 20;

/// The helpers a template may call: handlebars' built-ins minus `log`, which writes its arguments (the
/// code…) to the process log.
const HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "raw", "eq", "ne", "gt", "gte", "lt", "lte", "and", "or", "not", "len",
];

/// The variables every job has (contract §7); job `vars` add their own keys.
const BUILT_IN: &[&str] = &[
    "code",
    "friendly_name",
    "locale",
    "action",
    "channel",
    "message_type",
    "user_id",
    "tenant",
    "vars",
    "pause",
];

/// What a template renders to, per channel.
#[derive(Clone, PartialEq, Eq)]
pub enum Rendered {
    Sms {
        body: String,
    },
    Voice {
        text: String,
        /// The language the text is in: the job's locale when its own (or its language's) template was
        /// used, the default locale when the lookup fell back to it.
        language: Locale,
    },
    Email {
        subject: String,
        text: String,
        html: String,
    },
}

// Rendered text holds the code: keep it out of any accidental `{:?}`.
impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rendered(***)")
    }
}

/// The shipped templates, compiled into the binary: what "revert to default" restores.
static SHIPPED: include_dir::Dir<'static> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/templates");

/// Which file of a channel × action × locale: sms and voice have one, email three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Body,
    Subject,
    Html,
    Text,
}

impl Part {
    fn suffix(self) -> &'static str {
        match self {
            Part::Body => "",
            Part::Subject => ".subject",
            Part::Html => ".html",
            Part::Text => ".txt",
        }
    }

    /// The part's name in the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Part::Body => "body",
            Part::Subject => "subject",
            Part::Html => "html",
            Part::Text => "text",
        }
    }

    pub fn of(channel: Channel) -> &'static [Part] {
        match channel {
            Channel::Sms | Channel::Voice => &[Part::Body],
            Channel::Email => &[Part::Subject, Part::Text, Part::Html],
        }
    }
}

/// Registry name of a template = its path under `templates.dir` without `.hbs`.
pub fn template_name(channel: Channel, action: Action, locale: &str, part: Part) -> String {
    format!("{}/{}.{}{}", channel.as_str(), action.as_str(), locale, part.suffix())
}

/// One problem in one template file, positioned when the parser knows where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl TemplateProblem {
    fn at(file: &str, message: impl Into<String>) -> TemplateProblem {
        TemplateProblem {
            file: file.to_owned(),
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template problems:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<TemplateProblem>),
    #[error("no {0} template for this channel, action and locale (nor the default locale)")]
    Missing(String),
    #[error("template {name}: {message}")]
    Render { name: String, message: String },
    /// The directory could not be read or written: the templates are fine, the disk is not.
    #[error("{file}: {what}")]
    Io {
        file: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(file: impl Into<String>, what: &'static str) -> impl FnOnce(std::io::Error) -> TemplateError {
    let file = file.into();
    move |source| TemplateError::Io { file, what, source }
}

/// Compiled templates. Text templates (sms, voice, email subject and text) are not escaped; HTML email
/// templates escape every variable.
struct Compiled {
    text: Handlebars<'static>,
    html: Handlebars<'static>,
    names: HashSet<String>,
    /// Job variables the templates print (declared in `templates.vars` or found in a template): a job
    /// without one renders it empty instead of failing strict mode.
    vars: BTreeSet<String>,
    warnings: Vec<TemplateProblem>,
}

pub struct Templates {
    dir: PathBuf,
    default_locale: Locale,
    declared: BTreeSet<String>,
    compiled: ArcSwap<Compiled>,
}

fn registry(escape: bool) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    // Writes its arguments to the process log. (The crate's own debug logging of helper arguments is
    // compiled out by its `no_logging` feature, see Cargo.toml.)
    hb.unregister_helper("log");
    if !escape {
        hb.register_escape_fn(handlebars::no_escape);
    }
    hb
}

/// A set of file changes under `templates.dir`: new text, or `None` to remove the file.
type Changes = BTreeMap<String, Option<String>>;

impl Templates {
    /// Loads and checks every template under `dir`. Any problem fails the whole load.
    pub fn load(dir: &Path, default_locale: &Locale) -> Result<Templates, TemplateError> {
        Templates::load_with_vars(dir, default_locale, &[])
    }

    /// [`Templates::load`] with the job variables declared in `templates.vars`.
    pub fn load_with_vars(dir: &Path, default_locale: &Locale, vars: &[String]) -> Result<Templates, TemplateError> {
        let declared = declared_vars(vars)?;
        let compiled = {
            let _lock = DirLock::shared(dir)?;
            compile_dir(dir, default_locale, &declared, &Changes::new())?
        };
        Ok(Templates {
            dir: dir.to_owned(),
            default_locale: default_locale.clone(),
            declared,
            compiled: ArcSwap::from_pointee(compiled),
        })
    }

    /// Re-reads `dir`; on any problem the templates in use stay as they were. Blocking: it reads files
    /// and waits for a save in progress to finish.
    pub fn reload(&self) -> Result<(), TemplateError> {
        let _lock = DirLock::shared(&self.dir)?;
        let compiled = compile_dir(&self.dir, &self.default_locale, &self.declared, &Changes::new())?;
        self.compiled.store(Arc::new(compiled));
        Ok(())
    }

    pub fn default_locale(&self) -> &Locale {
        &self.default_locale
    }

    /// What the templates in use do that is allowed but maybe not meant (e.g. a variable that is
    /// neither built in nor declared in `templates.vars`).
    pub fn warnings(&self) -> Vec<TemplateProblem> {
        self.compiled.load().warnings.clone()
    }

    /// Renders every part the job's channel needs.
    pub fn render(&self, job: &Job) -> Result<Rendered, TemplateError> {
        let compiled = self.compiled.load();
        // Owned by handlebars' context as it is: `render(name, &value)` would copy it once per part.
        let ctx = handlebars::Context::from(context(job, &self.default_locale, &compiled.vars));
        let locale = job.locale.as_ref().unwrap_or(&self.default_locale);
        let find = |part: Part| -> Result<(String, bool), TemplateError> {
            locale
                .fallbacks()
                .map(|l| (l, true))
                .chain(std::iter::once((self.default_locale.as_str(), false)))
                .map(|(l, own)| (template_name(job.channel, job.action, l, part), own))
                .find(|(n, _)| compiled.names.contains(n))
                .ok_or_else(|| TemplateError::Missing(template_name(job.channel, job.action, "*", part)))
        };
        let part = |part: Part| -> Result<String, TemplateError> {
            let (name, _) = find(part)?;
            let hb = if part == Part::Html {
                &compiled.html
            } else {
                &compiled.text
            };
            hb.render_with_context(&name, &ctx).map_err(|e| TemplateError::Render {
                name,
                message: render_message(&e),
            })
        };
        Ok(match job.channel {
            // Files end with a newline that is not part of a text message.
            Channel::Sms => Rendered::Sms {
                body: part(Part::Body)?.trim().to_owned(),
            },
            Channel::Voice => Rendered::Voice {
                text: part(Part::Body)?.trim().to_owned(),
                language: if find(Part::Body)?.1 {
                    locale.clone()
                } else {
                    self.default_locale.clone()
                },
            },
            Channel::Email => Rendered::Email {
                subject: part(Part::Subject)?.trim().to_owned(),
                text: part(Part::Text)?,
                html: part(Part::Html)?,
            },
        })
    }
}

/// `templates.vars`, each a name a job's `vars` can carry.
fn declared_vars(vars: &[String]) -> Result<BTreeSet<String>, TemplateError> {
    let mut out = BTreeSet::new();
    for v in vars {
        if v.is_empty() || v.len() > 64 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(TemplateError::Invalid(vec![TemplateProblem::at(
                "templates.vars",
                format!(
                    "`{}` is not a var name (1 to 64 letters, digits or `_`)",
                    v.escape_debug()
                ),
            )]));
        }
        out.insert(v.clone());
    }
    Ok(out)
}

/// The variables a template sees (contract §7), Auth0 names included.
fn context(job: &Job, default_locale: &Locale, var_names: &BTreeSet<String>) -> Value {
    let mut map = Map::new();
    let mut vars = Map::new();
    // Job vars first, so that the built-in names below win on a collision.
    for name in var_names {
        vars.insert(name.clone(), Value::String(String::new()));
    }
    for (k, v) in &job.vars {
        vars.insert(k.clone(), Value::String(v.clone()));
    }
    for (k, v) in &vars {
        map.insert(k.clone(), v.clone());
    }
    let friendly_name = job.friendly_name.clone().unwrap_or_default();
    let code = match job.channel {
        Channel::Voice => job.code.spoken(),
        _ => job.code.expose().to_owned(),
    };
    map.insert("code".into(), code.into());
    map.insert("friendly_name".into(), friendly_name.clone().into());
    map.insert(
        "locale".into(),
        job.locale.as_ref().unwrap_or(default_locale).as_str().into(),
    );
    map.insert("action".into(), job.action.as_str().into());
    map.insert("channel".into(), job.channel.as_str().into());
    map.insert("message_type".into(), job.channel.as_str().into());
    map.insert("user_id".into(), job.user_id.clone().into());
    map.insert("tenant".into(), json!({ "friendly_name": friendly_name }));
    map.insert("vars".into(), Value::Object(vars));
    map.insert(
        "pause".into(),
        if job.channel == Channel::Voice { PAUSE } else { " " }.into(),
    );
    Value::Object(map)
}

fn render_message(e: &handlebars::RenderError) -> String {
    match (e.line_no, e.column_no) {
        (Some(l), Some(c)) => format!("line {l}, column {c}: {}", reason(e)),
        _ => reason(e),
    }
}

/// Handlebars' reason, with the strict-mode one said plainly.
fn reason(e: &handlebars::RenderError) -> String {
    match e.reason() {
        handlebars::RenderErrorReason::MissingVariable(Some(name)) => format!("unknown variable `{name}`"),
        other => other.to_string(),
    }
}

/// One editable template: a channel × action × locale, with one part (sms, voice) or three (email).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateId {
    pub channel: Channel,
    pub action: Action,
    pub locale: Locale,
}

impl TemplateId {
    pub fn file(&self, part: Part) -> String {
        format!(
            "{}.hbs",
            template_name(self.channel, self.action, self.locale.as_str(), part)
        )
    }

    /// Whether a problem is in one of this template's files.
    pub fn owns(&self, problem: &TemplateProblem) -> bool {
        Part::of(self.channel).iter().any(|&p| self.file(p) == problem.file)
    }
}

/// The sources of a template's parts, by part name.
pub type Sources = std::collections::BTreeMap<&'static str, String>;

/// A checked template: what it renders with the sample variables, and what it should be told.
#[derive(Debug)]
pub struct Previewed {
    pub rendered: Rendered,
    pub warnings: Vec<TemplateProblem>,
}

impl Templates {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The template's sources as they are on disk; `None` when no part exists. The parts are read
    /// together: never one part of a save and another of the one before.
    pub fn read(&self, id: &TemplateId) -> Result<Option<Sources>, TemplateError> {
        let _lock = DirLock::shared(&self.dir)?;
        let mut sources = Sources::new();
        for &part in Part::of(id.channel) {
            match std::fs::read_to_string(self.dir.join(id.file(part))) {
                Ok(text) => {
                    sources.insert(part.name(), text);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(id.file(part), "cannot read")(e)),
            }
        }
        Ok((!sources.is_empty()).then_some(sources))
    }

    /// Every template in the directory, sorted by channel, action and locale.
    pub fn list(&self) -> std::io::Result<Vec<TemplateId>> {
        let mut ids: Vec<TemplateId> = Vec::new();
        for rel in list_files(&self.dir)? {
            if let Ok((channel, action, locale, _)) = parse_file_name(&rel) {
                let id = TemplateId {
                    channel,
                    action,
                    locale,
                };
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// The shipped default of a template, if it has one.
    pub fn shipped(id: &TemplateId) -> Option<Sources> {
        let mut sources = Sources::new();
        for &part in Part::of(id.channel) {
            let text = SHIPPED.get_file(id.file(part))?.contents_utf8()?;
            sources.insert(part.name(), text.to_owned());
        }
        Some(sources)
    }

    /// Checks a complete set of sources (every part present, each compiling and rendering with sample
    /// variables) and renders it. Problems carry the part's file name and, when known, line and column.
    pub fn preview(&self, id: &TemplateId, sources: &Sources) -> Result<Previewed, Vec<TemplateProblem>> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let mut out = BTreeMap::new();
        for &part in Part::of(id.channel) {
            let name = template_name(id.channel, id.action, id.locale.as_str(), part);
            match sources.get(part.name()) {
                None => problems.push(TemplateProblem::at(
                    &format!("{name}.hbs"),
                    format!("part `{}` is missing", part.name()),
                )),
                Some(source) => {
                    match check_source(&name, source, id.channel, id.action, &id.locale, part, &self.declared) {
                        Ok(checked) => {
                            warnings.extend(checked.warnings);
                            out.insert(part.name(), checked.output);
                        }
                        Err(p) => problems.push(p),
                    }
                }
            }
        }
        for key in sources.keys() {
            if !Part::of(id.channel).iter().any(|p| p.name() == *key) {
                problems.push(TemplateProblem::at(
                    &id.file(Part::of(id.channel)[0]),
                    format!("`{key}` is not a part of a {} template", id.channel.as_str()),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut take = |part: Part| out.remove(part.name()).unwrap_or_default();
        let rendered = match id.channel {
            Channel::Sms => Rendered::Sms {
                body: take(Part::Body).trim().to_owned(),
            },
            Channel::Voice => Rendered::Voice {
                text: take(Part::Body).trim().to_owned(),
                language: id.locale.clone(),
            },
            Channel::Email => Rendered::Email {
                subject: take(Part::Subject).trim().to_owned(),
                text: take(Part::Text),
                html: take(Part::Html),
            },
        };
        Ok(Previewed { rendered, warnings })
    }

    /// Saves every part as one change and puts it in use. The whole directory, with these sources in
    /// place, is checked first: nothing is written unless the set in use afterwards is valid, so a
    /// save never ends "written but not live". See [`write_set`] for how the parts change together.
    pub fn save(&self, id: &TemplateId, sources: &Sources) -> Result<Vec<TemplateProblem>, TemplateError> {
        let mut changes = Changes::new();
        for &part in Part::of(id.channel) {
            if let Some(text) = sources.get(part.name()) {
                changes.insert(id.file(part), Some(text.clone()));
            }
        }
        self.apply(id, changes)
    }

    fn apply(&self, id: &TemplateId, changes: Changes) -> Result<Vec<TemplateProblem>, TemplateError> {
        let _lock = DirLock::exclusive(&self.dir)?;
        let compiled = compile_dir(&self.dir, &self.default_locale, &self.declared, &changes)?;
        write_set(&self.dir, &changes)?;
        let warnings = compiled.warnings.iter().filter(|w| id.owns(w)).cloned().collect();
        self.compiled.store(Arc::new(compiled));
        Ok(warnings)
    }

    /// Back to the shipped default, or, for a template that has none, removes it (lookups then fall
    /// back to the language or the default locale). Returns what the template is now, if anything.
    pub fn revert(&self, id: &TemplateId) -> Result<Option<Sources>, TemplateError> {
        match Templates::shipped(id) {
            Some(defaults) => {
                self.save(id, &defaults)?;
                Ok(Some(defaults))
            }
            None => {
                if id.locale == self.default_locale {
                    return Err(TemplateError::Invalid(vec![TemplateProblem::at(
                        &id.file(Part::of(id.channel)[0]),
                        "the default locale's template cannot be removed: every job falls back to it",
                    )]));
                }
                let changes = Part::of(id.channel).iter().map(|&p| (id.file(p), None)).collect();
                self.apply(id, changes)?;
                Ok(None)
            }
        }
    }

    /// Changes in the directory (names, sizes, modification times): what replicas sharing the
    /// directory poll to pick up each other's edits.
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        if let Ok(files) = list_files(&self.dir) {
            for rel in files {
                std::hash::Hash::hash(&rel, &mut h);
                if let Ok(meta) = std::fs::metadata(self.dir.join(&rel)) {
                    std::hash::Hash::hash(&meta.len(), &mut h);
                    std::hash::Hash::hash(&meta.modified().ok(), &mut h);
                }
            }
        }
        std::hash::Hasher::finish(&h)
    }
}

/// Lock file in `templates.dir`, shared by every herald process using the directory (replicas on one
/// volume): a save holds it exclusively while it writes, a load or read holds it shared while it reads.
const LOCK_FILE: &str = ".herald.lock";
/// Journal of a save in progress: which renames and removals make up the change. A save that dies
/// between its first and last rename is finished by the next process that takes the lock.
const JOURNAL_FILE: &str = ".herald.journal";

/// An advisory (flock) lock on `templates.dir`, released on drop.
struct DirLock(Option<std::fs::File>);

impl DirLock {
    fn open(dir: &Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
    }

    /// For reading. A directory herald cannot write to (a read-only mount) has no writer to wait for.
    fn shared(dir: &Path) -> Result<DirLock, TemplateError> {
        let file = match DirLock::open(dir) {
            Ok(file) => file,
            Err(_) if !dir.join(JOURNAL_FILE).exists() => return Ok(DirLock(None)),
            Err(e) => return Err(io_error(LOCK_FILE, "cannot open the lock file")(e)),
        };
        file.lock_shared()
            .map_err(io_error(LOCK_FILE, "cannot lock the templates directory"))?;
        let lock = DirLock(Some(file));
        if dir.join(JOURNAL_FILE).exists() {
            // Under the shared lock no writer is at work: one died mid-save, and this finishes its save.
            drop(lock);
            return DirLock::exclusive(dir);
        }
        Ok(lock)
    }

    /// For writing; finishes a save that a dead process left half done.
    fn exclusive(dir: &Path) -> Result<DirLock, TemplateError> {
        let file = DirLock::open(dir).map_err(io_error(LOCK_FILE, "cannot open the lock file"))?;
        file.lock()
            .map_err(io_error(LOCK_FILE, "cannot lock the templates directory"))?;
        let lock = DirLock(Some(file));
        roll_forward(dir)?;
        Ok(lock)
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if let Some(file) = &self.0 {
            let _ = file.unlock();
        }
    }
}

/// Writes a set of changes as one: every new part goes to a temp file (fsynced), a journal listing the
/// renames and removals is written atomically, then they are applied and the journal removed. Readers
/// hold the shared lock, so they see the set before or after; a crash after the journal is written is
/// finished by [`roll_forward`], one before it leaves only temp files. Call with the exclusive lock.
fn write_set(dir: &Path, changes: &Changes) -> Result<(), TemplateError> {
    let mut journal = String::new();
    let mut temps = Vec::new();
    let result = (|| {
        for (rel, text) in changes {
            match text {
                Some(text) => {
                    let tmp = temp_name(rel);
                    temps.push(tmp.clone());
                    write_synced(&dir.join(&tmp), text.as_bytes()).map_err(io_error(rel.clone(), "cannot write"))?;
                    journal.push_str(&format!("rename\t{tmp}\t{rel}\n"));
                }
                None => journal.push_str(&format!("remove\t{rel}\n")),
            }
        }
        let tmp = format!("{JOURNAL_FILE}.tmp");
        write_synced(&dir.join(&tmp), journal.as_bytes()).map_err(io_error(JOURNAL_FILE, "cannot write"))?;
        std::fs::rename(dir.join(&tmp), dir.join(JOURNAL_FILE)).map_err(io_error(JOURNAL_FILE, "cannot write"))?;
        sync_dir(dir).map_err(io_error(JOURNAL_FILE, "cannot write"))
    })();
    if result.is_err() {
        for tmp in temps {
            let _ = std::fs::remove_file(dir.join(tmp));
        }
        return result;
    }
    roll_forward(dir)
}

/// Applies the journal of a save, if there is one, and removes it. Each step can be repeated: a rename
/// whose temp file is gone was done, a removal of a missing file too.
fn roll_forward(dir: &Path) -> Result<(), TemplateError> {
    let journal = match std::fs::read_to_string(dir.join(JOURNAL_FILE)) {
        Ok(journal) => journal,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(JOURNAL_FILE, "cannot read")(e)),
    };
    let mut subdirs = BTreeSet::new();
    for line in journal.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let rel = match fields[..] {
            ["rename", tmp, rel] => {
                match std::fs::rename(dir.join(tmp), dir.join(rel)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_error(rel, "cannot write")(e));
                    }
                    _ => {}
                }
                rel
            }
            ["remove", rel] => {
                match std::fs::remove_file(dir.join(rel)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_error(rel, "cannot remove")(e));
                    }
                    _ => {}
                }
                rel
            }
            // Not written by herald: leave it for an operator rather than guess.
            _ => {
                return Err(TemplateError::Invalid(vec![TemplateProblem::at(
                    JOURNAL_FILE,
                    "unreadable journal of an interrupted save: check the templates and remove it",
                )]));
            }
        };
        if let Some(parent) = Path::new(rel).parent() {
            subdirs.insert(dir.join(parent));
        }
    }
    for sub in subdirs {
        sync_dir(&sub).map_err(io_error(sub.display().to_string(), "cannot sync"))?;
    }
    std::fs::remove_file(dir.join(JOURNAL_FILE)).map_err(io_error(JOURNAL_FILE, "cannot remove"))?;
    sync_dir(dir).map_err(io_error(JOURNAL_FILE, "cannot remove"))
}

/// `sms/.enrollment.en.hbs.<random>.tmp`: beside its target (a rename stays in one file system), and
/// ending in `.tmp` so that no load takes it for a template.
fn temp_name(rel: &str) -> String {
    let (sub, file) = rel.rsplit_once('/').unwrap_or(("", rel));
    let tmp = format!(".{file}.{}.tmp", fastrand::u64(..));
    if sub.is_empty() { tmp } else { format!("{sub}/{tmp}") }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::File::open(dir) {
        Ok(d) => d.sync_all(),
        // A removal can leave a channel directory that never existed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The sample variables of a check: every built-in, and each named var set to its own name.
fn sample_job(channel: Channel, action: Action, locale: &Locale, vars: &BTreeSet<String>) -> Job {
    let json = json!({
        "id": "sample", "channel": channel.as_str(),
        "to": if channel == Channel::Email { "jane@example.com" } else { "+14155550123" },
        "code": SAMPLE_CODE, "action": action.as_str(), "locale": locale.as_str(),
        "user_id": "auth0|sample", "friendly_name": "Acme",
    });
    let mut job = Job::from_json(json.to_string().as_bytes()).expect("sample job is valid");
    job.vars = vars.iter().map(|v| (v.clone(), v.clone())).collect();
    job
}

const SAMPLE_CODE: &str = "123456";

/// Splits `sms/enrollment.es-AR.hbs` into its parts, or says why the name is not a template name.
pub fn parse_file_name(rel: &str) -> Result<(Channel, Action, Locale, Part), String> {
    let rel = rel.strip_suffix(".hbs").ok_or("template files end in .hbs")?;
    let (channel, rest) = rel.split_once('/').ok_or("templates live in sms/, voice/ or email/")?;
    let channel = Channel::parse(channel).ok_or_else(|| format!("unknown channel directory `{channel}`"))?;
    let mut pieces = rest.split('.');
    let action = pieces.next().unwrap_or_default();
    let action = Action::parse(action).ok_or_else(|| format!("unknown action `{action}`"))?;
    let locale = Locale::parse(pieces.next().ok_or("missing locale (action.locale.hbs)")?)?;
    let part = match (channel, pieces.next()) {
        (Channel::Email, Some("subject")) => Part::Subject,
        (Channel::Email, Some("html")) => Part::Html,
        (Channel::Email, Some("txt")) => Part::Text,
        (Channel::Email, _) => return Err("email templates end in .subject.hbs, .html.hbs or .txt.hbs".into()),
        (_, None) => Part::Body,
        (_, Some(_)) => return Err("sms and voice templates are named action.locale.hbs".into()),
    };
    if pieces.next().is_some() {
        return Err("too many dots in the file name".into());
    }
    Ok((channel, action, locale, part))
}

/// A source that passed [`check_source`].
pub struct Checked {
    template: Template,
    /// Rendered with the sample variables.
    output: String,
    /// Variables it prints that are neither built in nor declared.
    vars: BTreeSet<String>,
    warnings: Vec<TemplateProblem>,
}

/// Parses one source, checks its structure, and renders it with sample variables, so that syntax
/// errors, forbidden constructs, misspelt variables and an SMS or call without the code are found
/// before a job is. Runs on a thread with a large stack: nothing in `source` can overflow it.
pub fn check_source(
    name: &str,
    source: &str,
    channel: Channel,
    action: Action,
    locale: &Locale,
    part: Part,
    declared: &BTreeSet<String>,
) -> Result<Checked, TemplateProblem> {
    let file = format!("{name}.hbs");
    if source.len() > MAX_SOURCE {
        return Err(TemplateProblem::at(
            &file,
            format!("{} bytes, more than the {MAX_SOURCE} allowed", source.len()),
        ));
    }
    let expressions = source.matches("{{").count();
    if expressions > MAX_EXPRESSIONS {
        return Err(TemplateProblem::at(
            &file,
            format!("{expressions} `{{{{` expressions, more than the {MAX_EXPRESSIONS} allowed"),
        ));
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("template-check".into())
            .stack_size(PARSE_STACK)
            .spawn_scoped(scope, || {
                check_on_this_thread(name, source, channel, action, locale, part, declared)
            })
            .map_err(|e| TemplateProblem::at(&file, format!("cannot start the checking thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(TemplateProblem::at(&file, "the template could not be checked")))
    })
}

fn check_on_this_thread(
    name: &str,
    source: &str,
    channel: Channel,
    action: Action,
    locale: &Locale,
    part: Part,
    declared: &BTreeSet<String>,
) -> Result<Checked, TemplateProblem> {
    let file = format!("{name}.hbs");
    let template = Template::compile_with_name(source, name.to_owned()).map_err(|e| {
        let (line, column) = e.pos().map_or((None, None), |(l, c)| (Some(l), Some(c)));
        TemplateProblem {
            file: file.clone(),
            line,
            column,
            message: e.reason().to_string(),
        }
    })?;
    // On error the (maybe very deep) template is dropped here, on this thread's stack.
    check_tree(&template, 1, None).map_err(|(position, message)| TemplateProblem {
        file: file.clone(),
        line: position.map(|p| p.0),
        column: position.map(|p| p.1),
        message,
    })?;
    let mut hb = registry(part != Part::Html);
    hb.register_template(name, template.clone());
    // Strict mode stops at the first unknown variable: each one that may be a job var (not a misspelt
    // built-in name) becomes a warning and a sample value, and the render is tried again.
    let mut vars = declared.clone();
    let mut found = BTreeSet::new();
    let mut warnings = Vec::new();
    let output = loop {
        let job = sample_job(channel, action, locale, &vars);
        match hb.render(name, &context(&job, locale, &vars)) {
            Ok(output) => break output,
            Err(e) => {
                let problem = |message: String| TemplateProblem {
                    file: file.clone(),
                    line: e.line_no,
                    column: e.column_no,
                    message,
                };
                let handlebars::RenderErrorReason::MissingVariable(Some(path)) = e.reason() else {
                    return Err(problem(reason(&e)));
                };
                let var = path.strip_prefix("vars.").unwrap_or(path);
                let root = var.split('.').next().unwrap_or(var);
                if BUILT_IN.contains(&root) {
                    // `tenant.nmae`, `code.x`: a built-in used wrongly, never a job var.
                    return Err(problem(reason(&e)));
                }
                if let Some(built_in) = looks_like_built_in(var) {
                    return Err(problem(format!(
                        "unknown variable `{path}` (did you mean `{built_in}`?)"
                    )));
                }
                if !is_var_name(var) || vars.contains(var) || vars.len() >= 64 {
                    return Err(problem(reason(&e)));
                }
                warnings.push(problem(format!(
                    "`{var}` is not a built-in variable nor declared in templates.vars: it prints the job's \
                     `vars.{var}`, and nothing for a job without it"
                )));
                vars.insert(var.to_owned());
                found.insert(var.to_owned());
            }
        }
    };
    if matches!(channel, Channel::Sms | Channel::Voice) {
        let code = match channel {
            Channel::Voice => crate::job::OtpCode::parse(SAMPLE_CODE)
                .map(|c| c.spoken())
                .unwrap_or_default(),
            _ => SAMPLE_CODE.to_owned(),
        };
        if !output.contains(&code) {
            return Err(TemplateProblem::at(
                &file,
                format!(
                    "a{} {} template must print `{{{{code}}}}`: with sample variables this one renders without it",
                    if channel == Channel::Sms { "n" } else { "" },
                    channel.as_str()
                ),
            ));
        }
    }
    Ok(Checked {
        template,
        output,
        vars: found,
        warnings,
    })
}

impl fmt::Debug for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checked")
            .field("vars", &self.vars)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

fn is_var_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The built-in variable a name is probably a typo of (`codee`, `Code`, `freindly_name`), if any.
fn looks_like_built_in(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    BUILT_IN
        .iter()
        .copied()
        .find(|b| *b == lower || (name.len() >= 3 && edit_distance(&lower, b) <= 2))
}

/// Levenshtein distance, for short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

type TreeProblem = (Option<(usize, usize)>, String);

/// Refuses what can recurse without end or write outside the message: partials (`{{> x}}`, which can
/// include themselves), decorators (`{{#*inline}}` defines such partials), helpers other than
/// [`HELPERS`], and nesting deeper than [`MAX_DEPTH`].
fn check_tree(template: &Template, depth: usize, at: Option<(usize, usize)>) -> Result<(), TreeProblem> {
    if depth > MAX_DEPTH {
        return Err((at, format!("nested more than {MAX_DEPTH} levels deep")));
    }
    for (i, element) in template.elements.iter().enumerate() {
        let at = template.mapping.get(i).map(|m| (m.0, m.1)).or(at);
        match element {
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) | TemplateElement::HelperBlock(h) => {
                let is_helper = h.block || !h.params.is_empty() || !h.hash.is_empty();
                check_call(&h.name, is_helper, depth, at)?;
                for p in h.params.iter().chain(h.hash.values()) {
                    check_param(p, depth, at)?;
                }
                for t in [&h.template, &h.inverse].into_iter().flatten() {
                    check_tree(t, depth + 1, at)?;
                }
            }
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                return Err((
                    at,
                    "partials (`{{> name}}`) are not supported: each template stands alone".into(),
                ));
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                return Err((
                    at,
                    "decorators and inline partials (`{{#*inline}}`, `{{* name}}`) are not supported".into(),
                ));
            }
            _ => return Err((at, "unsupported template construct".into())),
        }
    }
    Ok(())
}

fn check_call(name: &Parameter, is_helper: bool, depth: usize, at: Option<(usize, usize)>) -> Result<(), TreeProblem> {
    match name {
        Parameter::Name(n) if is_helper && !HELPERS.contains(&n.as_str()) => Err((
            at,
            format!(
                "helper `{n}` is not available (templates can use {})",
                HELPERS.join(", ")
            ),
        )),
        other => check_param(other, depth, at),
    }
}

fn check_param(param: &Parameter, depth: usize, at: Option<(usize, usize)>) -> Result<(), TreeProblem> {
    match param {
        Parameter::Subexpression(sub) => {
            if depth + 1 > MAX_DEPTH {
                return Err((at, format!("nested more than {MAX_DEPTH} levels deep")));
            }
            match sub.as_element() {
                TemplateElement::Expression(h) => {
                    check_call(&h.name, !h.params.is_empty() || !h.hash.is_empty(), depth + 1, at)?;
                    for p in h.params.iter().chain(h.hash.values()) {
                        check_param(p, depth + 1, at)?;
                    }
                    Ok(())
                }
                _ => Err((at, "unsupported subexpression".into())),
            }
        }
        _ => Ok(()),
    }
}

fn compile_dir(
    dir: &Path,
    default_locale: &Locale,
    declared: &BTreeSet<String>,
    changes: &Changes,
) -> Result<Compiled, TemplateError> {
    let mut problems = Vec::new();
    let mut compiled = Compiled {
        text: registry(false),
        html: registry(true),
        names: HashSet::new(),
        vars: declared.clone(),
        warnings: Vec::new(),
    };
    let mut files = list_files(dir).map_err(|e| {
        TemplateError::Invalid(vec![TemplateProblem::at(
            &dir.display().to_string(),
            format!("cannot read templates directory: {e}"),
        )])
    })?;
    // The directory as it will be once `changes` are written.
    files.retain(|rel| !matches!(changes.get(rel), Some(None)));
    for (rel, text) in changes {
        if text.is_some() && !files.contains(rel) {
            files.push(rel.clone());
        }
    }
    files.sort();
    for rel in files {
        let (channel, action, locale, part) = match parse_file_name(&rel) {
            Ok(parsed) => parsed,
            Err(e) => {
                problems.push(TemplateProblem::at(&rel, e));
                continue;
            }
        };
        let source = match changes.get(&rel) {
            Some(Some(text)) => text.clone(),
            _ => match read_capped(&dir.join(&rel)) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(TemplateProblem::at(&rel, e));
                    continue;
                }
            },
        };
        let name = template_name(channel, action, locale.as_str(), part);
        let checked = match check_source(&name, &source, channel, action, &locale, part, declared) {
            Ok(checked) => checked,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        let hb = if part == Part::Html {
            &mut compiled.html
        } else {
            &mut compiled.text
        };
        hb.register_template(&name, checked.template);
        compiled.vars.extend(checked.vars);
        compiled.warnings.extend(checked.warnings);
        compiled.names.insert(name);
    }
    for channel in Channel::ALL {
        for action in Action::ALL {
            for &part in Part::of(channel) {
                let name = template_name(channel, action, default_locale.as_str(), part);
                if !compiled.names.contains(&name) && !problems.iter().any(|p| p.file == format!("{name}.hbs")) {
                    problems.push(TemplateProblem::at(
                        &format!("{name}.hbs"),
                        "missing: every channel and action needs a template in the default locale",
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(compiled)
    } else {
        Err(TemplateError::Invalid(problems))
    }
}

/// A template file, read no further than one byte past [`MAX_SOURCE`] (the check then names its size).
fn read_capped(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SOURCE as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() > MAX_SOURCE {
        return Err(format!("more than the {MAX_SOURCE} bytes allowed"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())
}

/// `*.hbs` files one level below `dir`, as `channel/file.hbs` (sorted, for stable reports).
fn list_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let sub = entry.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(entry.path())? {
            let file = file?;
            let name = file.file_name().to_string_lossy().into_owned();
            if file.file_type()?.is_file() && name.ends_with(".hbs") {
                out.push(format!("{sub}/{name}"));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn shipped() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for rel in list_files(Path::new("templates")).unwrap() {
            write(
                dir.path(),
                &rel,
                &std::fs::read_to_string(Path::new("templates").join(&rel)).unwrap(),
            );
        }
        dir
    }

    fn job(channel: &str, to: &str, locale: &str) -> Job {
        let json = json!({"id": "j", "channel": channel, "to": to, "code": "482913", "user_id": "u",
            "locale": locale, "friendly_name": "Acme", "vars": {"tenant": "acme"}});
        Job::from_json(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn shipped_templates_load() {
        let en = Locale::parse("en").unwrap();
        Templates::load(Path::new("templates"), &en).unwrap();
    }

    #[test]
    fn locale_falls_back_to_language_then_default() {
        let dir = shipped();
        write(dir.path(), "sms/second-factor-authentication.es.hbs", "ES {{code}}");
        write(dir.path(), "sms/second-factor-authentication.es-AR.hbs", "AR {{code}}");
        let t = Templates::load(dir.path(), &Locale::parse("en").unwrap()).unwrap();
        let body = |locale: &str| match t.render(&job("sms", "+14155550123", locale)).unwrap() {
            Rendered::Sms { body } => body,
            _ => unreachable!(),
        };
        assert_eq!(body("es-AR"), "AR 482913");
        assert_eq!(body("es-MX"), "ES 482913");
        assert_eq!(body("ja"), "482913 is your verification code for Acme.");
    }

    #[test]
    fn voice_reads_digits_and_pauses() {
        let dir = shipped();
        write(
            dir.path(),
            "voice/second-factor-authentication.en.hbs",
            "Code {{pause}}{{code}}",
        );
        let t = Templates::load(dir.path(), &Locale::parse("en").unwrap()).unwrap();
        let Rendered::Voice { text, .. } = t.render(&job("voice", "+14155550123", "en")).unwrap() else {
            panic!()
        };
        assert_eq!(text, format!("Code {PAUSE}4. 8. 2. 9. 1. 3"));
    }

    #[test]
    fn html_escapes_and_text_does_not() {
        let dir = shipped();
        write(dir.path(), "email/enrollment.en.html.hbs", "<p>{{friendly_name}}</p>");
        write(dir.path(), "email/enrollment.en.txt.hbs", "{{friendly_name}}");
        let t = Templates::load(dir.path(), &Locale::parse("en").unwrap()).unwrap();
        let mut j = job("email", "a@b.co", "en");
        j.action = Action::Enrollment;
        j.friendly_name = Some("A&B <x>".into());
        let Rendered::Email { html, text, .. } = t.render(&j).unwrap() else {
            panic!()
        };
        assert_eq!(html, "<p>A&amp;B &lt;x&gt;</p>");
        assert_eq!(text, "A&B <x>");
    }

    #[test]
    fn problems_have_positions_and_unknown_variables_are_refused() {
        let dir = shipped();
        write(dir.path(), "sms/enrollment.fr.hbs", "Bonjour\n{{#if code}}oops");
        write(dir.path(), "sms/enrollment.de.hbs", "{{nope}}");
        write(dir.path(), "sms/enrollment.de.hbs.bak.hbs", "x");
        let Err(TemplateError::Invalid(problems)) = Templates::load(dir.path(), &Locale::parse("en").unwrap()) else {
            panic!()
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            problems
                .iter()
                .any(|p| p.file == "sms/enrollment.fr.hbs" && p.line == Some(2)),
            "{text:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.file == "sms/enrollment.de.hbs" && p.message.contains("nope")),
            "{text:?}"
        );
        assert_eq!(problems.len(), 3, "{text:?}");
    }

    #[test]
    fn conditional_vars_pass_strict_mode() {
        let en = Locale::parse("en").unwrap();
        let src = "{{#if vars.tenant}}{{vars.tenant}}{{/if}} {{tenant.friendly_name}} {{message_type}}";
        check_source(
            "sms/enrollment.en",
            &format!("{src} {{{{code}}}}"),
            Channel::Sms,
            Action::Enrollment,
            &en,
            Part::Body,
            &BTreeSet::new(),
        )
        .unwrap();
    }

    fn check(channel: Channel, source: &str) -> Result<Checked, TemplateProblem> {
        check_with(channel, source, &BTreeSet::new())
    }

    fn check_with(channel: Channel, source: &str, declared: &BTreeSet<String>) -> Result<Checked, TemplateProblem> {
        let en = Locale::parse("en").unwrap();
        let part = if channel == Channel::Email {
            Part::Text
        } else {
            Part::Body
        };
        let name = template_name(channel, Action::Enrollment, "en", part);
        check_source(&name, source, channel, Action::Enrollment, &en, part, declared)
    }

    /// Each of these aborted the whole process with a stack overflow (issue #17).
    #[test]
    fn hostile_structures_are_refused_not_crashed_on() {
        let deep_if = format!("{}{{{{code}}}}{}", "{{#if code}}".repeat(2000), "{{/if}}".repeat(2000));
        // As deep as a source of the largest allowed size can be.
        let n = MAX_SOURCE / "{{#if a}}{{/if}}".len();
        let deepest = format!("{}{}", "{{#if a}}".repeat(n), "{{/if}}".repeat(n));
        let m = (MAX_SOURCE - 30) / "(len )".len();
        let deep_sub = format!("{{{{code}}}}{{{{len {}code{}}}}}", "(len ".repeat(m), ")".repeat(m));
        let deep_else = format!(
            "{{{{#if a}}}}{}{{{{/if}}}}{{{{code}}}}",
            "{{else if a}}".repeat(MAX_SOURCE / 14)
        );
        let m = (MAX_SOURCE - 30) / 2;
        let deep_array = format!("{{{{code}}}}{{{{eq code {}{}}}}}", "[".repeat(m), "]".repeat(m));
        let cases = [
            (r#"{{#*inline "a"}}{{> a}}{{/inline}}{{> a}}"#, "inline partials"),
            ("{{> sms/enrollment.en}} {{code}}", "partials"),
            ("{{#> layout}}x{{/layout}} {{code}}", "partials"),
            ("{{* decorator}} {{code}}", "decorators"),
            (&deep_if, "expressions, more than the 512 allowed"),
            (&deepest, "expressions, more than the 512 allowed"),
            (&deep_else, "expressions, more than the 512 allowed"),
            (&deep_sub, "levels deep"),
            (&deep_array, ""),
        ];
        for (source, needle) in cases {
            let p = check(Channel::Sms, source)
                .err()
                .unwrap_or_else(|| panic!("accepted {:.60}", source));
            assert!(p.message.contains(needle), "{:.60}: {p}", source);
        }
        let huge = "x".repeat(MAX_SOURCE + 1);
        assert!(check(Channel::Sms, &huge).unwrap_err().message.contains("allowed"));
        // Line and column of the construct, for `templates check` and the admin API.
        let p = check(Channel::Sms, "{{code}}\nand {{> other}}").unwrap_err();
        assert_eq!((p.line, p.column), (Some(2), Some(5)), "{p}");
    }

    /// The deepest template that is accepted renders on a job's thread: a tokio worker has 2 MiB of
    /// stack, a debug build's frames are large, so this renders it with 1 MiB.
    #[test]
    fn the_deepest_accepted_template_renders_on_a_small_stack() {
        let levels = MAX_DEPTH - 1;
        let source = format!(
            "{}{{{{code}}}}{}",
            "{{#if code}}".repeat(levels),
            "{{/if}}".repeat(levels)
        );
        let dir = shipped();
        write(dir.path(), "sms/enrollment.en.hbs", &source);
        let t = Templates::load(dir.path(), &Locale::parse("en").unwrap()).unwrap();
        let mut j = job("sms", "+14155550123", "en");
        j.action = Action::Enrollment;
        let body = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || match t.render(&j) {
                Ok(Rendered::Sms { body }) => body,
                other => panic!("{other:?}"),
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(body, "482913");
        let too_deep = format!(
            "{}{{{{code}}}}{}",
            "{{#if code}}".repeat(MAX_DEPTH),
            "{{/if}}".repeat(MAX_DEPTH)
        );
        assert!(check(Channel::Sms, &too_deep).is_err());
    }

    /// A dropped-in file with a hostile template is a refused load (the set in use stays), not a crash.
    #[test]
    fn a_hostile_file_in_the_directory_is_a_refused_reload() {
        let dir = shipped();
        let t = Templates::load(dir.path(), &Locale::parse("en").unwrap()).unwrap();
        write(
            dir.path(),
            "sms/enrollment.fr.hbs",
            r#"{{#*inline "a"}}{{> a}}{{/inline}}{{> a}}"#,
        );
        let Err(TemplateError::Invalid(problems)) = t.reload() else {
            panic!("reload accepted a recursive partial")
        };
        assert_eq!(problems[0].file, "sms/enrollment.fr.hbs");
        assert!(t.render(&job("sms", "+14155550123", "fr")).is_ok());
    }

    /// `{{log code}}` printed the code to the process log; the `log` helper is gone and no other
    /// helper writes anywhere.
    #[test]
    fn no_helper_can_write_job_data_anywhere() {
        for source in [
            "{{log code}}",
            "{{log code level=\"error\"}}",
            "{{#if false}}{{log code}}{{/if}}{{code}}",
        ] {
            let p = check(Channel::Sms, source)
                .err()
                .unwrap_or_else(|| panic!("accepted {source}"));
            assert!(p.message.contains("helper `log` is not available"), "{source}: {p}");
        }
        // Even a registry given such a template (not through the checks) has nothing called `log`.
        let mut hb = registry(false);
        hb.register_template_string("t", "{{log code}}").unwrap();
        assert!(hb.render("t", &json!({"code": "482913"})).is_err());
        // What is left is usable.
        check(
            Channel::Sms,
            "{{#if (and code (not (eq locale \"x\")))}}{{code}}{{/if}} {{len code}}",
        )
        .unwrap();
    }

    #[test]
    fn sms_and_voice_templates_must_print_the_code() {
        for (channel, source) in [
            (Channel::Sms, "Your code is on its way"),
            (Channel::Voice, "Hello {{friendly_name}}"),
            (Channel::Sms, "{{#if false}}{{code}}{{/if}}"),
        ] {
            let p = check(channel, source)
                .err()
                .unwrap_or_else(|| panic!("accepted {source}"));
            assert!(p.message.contains("must print `{{code}}`"), "{p}");
        }
        check(Channel::Voice, "Your code: {{pause}}{{code}}").unwrap();
        // Email is three parts; the rule is for the one-part channels.
        check(Channel::Email, "Welcome to {{friendly_name}}").unwrap();
    }

    /// Contract §7: each key of `vars` is a variable. Declared names check clean, others are warnings,
    /// and a misspelt built-in name is still an error.
    #[test]
    fn job_vars_are_variables_and_built_in_typos_are_still_errors() {
        let declared: BTreeSet<String> = ["brand".to_owned()].into();
        let ok = check_with(Channel::Sms, "{{brand}}: {{code}}", &declared).unwrap();
        assert!(ok.warnings.is_empty());
        assert_eq!(ok.output, "brand: 123456");
        let warned = check(Channel::Sms, "{{brand}} {{vars.team}}: {{code}}").unwrap();
        assert_eq!(warned.warnings.len(), 2, "{:?}", warned.warnings);
        assert!(
            warned.warnings[0]
                .message
                .contains("`brand` is not a built-in variable")
        );
        assert_eq!(warned.vars, ["brand".to_owned(), "team".to_owned()].into());
        for (typo, meant) in [
            ("codee", "code"),
            ("Code", "code"),
            ("freindly_name", "friendly_name"),
            ("local", "locale"),
        ] {
            let p = check(Channel::Sms, &format!("{{{{{typo}}}}} {{{{code}}}}")).unwrap_err();
            assert!(
                p.message
                    .contains(&format!("unknown variable `{typo}` (did you mean `{meant}`?)")),
                "{p}"
            );
        }
        assert!(check(Channel::Sms, "{{tenant.nmae}} {{code}}").is_err());

        // At run time: the job's value, or nothing for a job without it (strict mode does not fail it).
        let dir = shipped();
        write(
            dir.path(),
            "sms/second-factor-authentication.en.hbs",
            "{{brand}}{{#if team}}/{{team}}{{/if}}: {{code}}",
        );
        let t = Templates::load_with_vars(dir.path(), &Locale::parse("en").unwrap(), &["team".to_owned()]).unwrap();
        assert_eq!(t.warnings().len(), 1, "{:?}", t.warnings());
        let mut j = job("sms", "+14155550123", "en");
        let body = |j: &Job| match t.render(j).unwrap() {
            Rendered::Sms { body } => body,
            _ => unreachable!(),
        };
        j.vars = [("brand".to_owned(), "Acme".to_owned())].into();
        assert_eq!(body(&j), "Acme: 482913");
        j.vars.clear();
        assert_eq!(body(&j), ": 482913");
        j.vars = [("team".to_owned(), "Ops".to_owned())].into();
        assert_eq!(body(&j), "/Ops: 482913");
        assert!(
            Templates::load_with_vars(dir.path(), &Locale::parse("en").unwrap(), &["bad name".to_owned()]).is_err()
        );
    }

    /// Voice says the text in the language of the template it came from: a job without a locale (or
    /// with one that has no template) gets the default locale's text, so the default locale's voice.
    #[test]
    fn voice_language_is_the_templates_locale() {
        let dir = shipped();
        write(
            dir.path(),
            "voice/second-factor-authentication.fr.hbs",
            "Votre code {{code}}",
        );
        write(dir.path(), "voice/enrollment.fr.hbs", "Votre code {{code}}");
        write(dir.path(), "sms/second-factor-authentication.fr.hbs", "{{code}}");
        write(dir.path(), "sms/enrollment.fr.hbs", "{{code}}");
        for action in ["second-factor-authentication", "enrollment"] {
            for part in [".subject", ".txt", ".html"] {
                write(dir.path(), &format!("email/{action}.fr{part}.hbs"), "{{code}}");
            }
        }
        let t = Templates::load(dir.path(), &Locale::parse("fr").unwrap()).unwrap();
        let language = |locale: Option<&str>| {
            let mut j = job("voice", "+14155550123", "en");
            j.locale = locale.map(|l| Locale::parse(l).unwrap());
            match t.render(&j).unwrap() {
                Rendered::Voice { language, .. } => language.as_str().to_owned(),
                _ => unreachable!(),
            }
        };
        assert_eq!(language(None), "fr");
        assert_eq!(language(Some("ja")), "fr", "no ja template: French text");
        assert_eq!(language(Some("fr-CA")), "fr-CA");
        assert_eq!(language(Some("en-GB")), "en-GB");
    }

    /// The parts of an email are one change: a reader or a reload sees the subject and body of the same
    /// save, never one of each (issue #17).
    #[test]
    fn a_multi_part_save_is_seen_whole_by_readers_and_reloads() {
        let dir = shipped();
        let en = Locale::parse("en").unwrap();
        let writer = Arc::new(Templates::load(dir.path(), &en).unwrap());
        // Another replica on the same directory.
        let reader = Templates::load(dir.path(), &en).unwrap();
        let id = TemplateId {
            channel: Channel::Email,
            action: Action::SecondFactorAuthentication,
            locale: en.clone(),
        };
        let set = |g: usize| -> Sources {
            [
                ("subject", format!("S{g} {{{{code}}}}")),
                ("text", format!("T{g} {{{{code}}}}")),
                ("html", format!("H{g} {{{{code}}}}")),
            ]
            .into()
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let saving = {
            let (writer, stop, id) = (writer.clone(), stop.clone(), id.clone());
            std::thread::spawn(move || {
                let mut g = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    g += 1;
                    writer.save(&id, &set(g)).unwrap();
                }
                g
            })
        };
        let generation = |s: &str| s.split(' ').next().unwrap()[1..].to_owned();
        let mut j = job("email", "a@b.co", "en");
        j.action = Action::SecondFactorAuthentication;
        for _ in 0..60 {
            let sources = reader.read(&id).unwrap().unwrap();
            if sources["subject"].starts_with('S') {
                let g = generation(&sources["subject"]);
                assert_eq!(generation(&sources["text"]), g, "read a half-written set");
                assert_eq!(generation(&sources["html"]), g, "read a half-written set");
            }
            reader.reload().unwrap();
            let Rendered::Email { subject, text, html } = reader.render(&j).unwrap() else {
                unreachable!()
            };
            if subject.starts_with('S') {
                let g = generation(&subject);
                assert_eq!(generation(&text), g, "reloaded a half-written set");
                assert_eq!(generation(&html), g, "reloaded a half-written set");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(saving.join().unwrap() > 1);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("email"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(!dir.path().join(JOURNAL_FILE).exists());
    }

    /// A save that died after its journal was written is finished by the next process to lock the
    /// directory: its parts appear together.
    #[test]
    fn an_interrupted_save_is_finished_by_the_next_reader() {
        let dir = shipped();
        let en = Locale::parse("en").unwrap();
        write(dir.path(), "email/.enrollment.en.subject.hbs.1.tmp", "New {{code}}");
        write(dir.path(), "email/.enrollment.en.txt.hbs.2.tmp", "New text {{code}}");
        std::fs::write(
            dir.path().join(JOURNAL_FILE),
            "rename\temail/.enrollment.en.subject.hbs.1.tmp\temail/enrollment.en.subject.hbs\n\
             rename\temail/.enrollment.en.txt.hbs.2.tmp\temail/enrollment.en.txt.hbs\n",
        )
        .unwrap();
        // As if it died after the first rename.
        std::fs::rename(
            dir.path().join("email/.enrollment.en.subject.hbs.1.tmp"),
            dir.path().join("email/enrollment.en.subject.hbs"),
        )
        .unwrap();
        Templates::load(dir.path(), &en).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join("email").join(f)).unwrap();
        assert_eq!(read("enrollment.en.subject.hbs"), "New {{code}}");
        assert_eq!(read("enrollment.en.txt.hbs"), "New text {{code}}");
        assert!(!dir.path().join(JOURNAL_FILE).exists());
    }

    /// A save is checked with the whole directory: if another file is broken nothing is written, so the
    /// save cannot end written but not live.
    #[test]
    fn a_save_is_checked_with_the_whole_directory_before_writing() {
        let dir = shipped();
        let t = Templates::load(dir.path(), &Locale::parse("en").unwrap()).unwrap();
        write(dir.path(), "sms/enrollment.de.hbs", "{{#if code}}");
        let id = TemplateId {
            channel: Channel::Sms,
            action: Action::Enrollment,
            locale: Locale::parse("it").unwrap(),
        };
        let sources: Sources = [("body", "Codice {{code}}".to_owned())].into();
        let Err(TemplateError::Invalid(problems)) = t.save(&id, &sources) else {
            panic!("saved beside a broken file")
        };
        assert!(!id.owns(&problems[0]) && problems[0].file == "sms/enrollment.de.hbs");
        assert!(!dir.path().join(id.file(Part::Body)).exists());
        std::fs::remove_file(dir.path().join("sms/enrollment.de.hbs")).unwrap();
        assert!(t.save(&id, &sources).unwrap().is_empty());
        // A write that fails is an I/O error, not a template problem.
        std::fs::create_dir(dir.path().join(JOURNAL_FILE.to_owned() + ".tmp")).unwrap();
        assert!(matches!(t.save(&id, &sources), Err(TemplateError::Io { .. })));
    }
}
