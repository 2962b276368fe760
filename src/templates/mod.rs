//! Message templates (docs/templates.md): Handlebars in strict mode, one file per channel × action × locale,
//! looked up with locale fallback (`es-AR` → `es` → default locale).
//!
//! Every source, whether from `templates.dir` or the admin API, is untrusted: it is parsed on a thread
//! with a large stack (a deeply nested source cannot overflow the process' stack), must nest at most
//! [`MAX_DEPTH`] levels, may not use partials, decorators or helpers that write anywhere, and is rendered
//! once with sample variables before it is used.
//!
//! Three rooms, put together by [`Templates`]: the [`repository`] keeps the files of `templates.dir` (its
//! lock, the journal of a save, the shipped defaults), [`checks`] decide whether a source may be used,
//! and the [`engine`] renders jobs with the set in use. A set is read, checked whole and only then used.

mod caps;
mod checks;
mod engine;
mod repository;
mod syntax;
pub mod twiml;

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use caps::{Cap, MAX_EMAIL_PART_BYTES, MAX_SMS_CHARS, MAX_SUBJECT_CHARS, MAX_TWIML_CHARS, Overrun};
pub use checks::{MAX_DEPTH, MAX_EACH_NESTING, MAX_EXPRESSIONS, MAX_SOURCE};
pub use twiml::PAUSE;

use crate::job::{Action, Channel, Job, Locale};
use engine::Engine;
use repository::{Changes, Repository, Source};

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
    /// Nothing rendered: WhatsApp carries the job's code in a template Meta approved (docs/providers/meta.md).
    Whatsapp,
}

impl Rendered {
    /// The message of a channel from the rendered text of each of its parts.
    fn from_parts(channel: Channel, mut text: impl FnMut(Part) -> String, language: Locale) -> Rendered {
        match channel {
            // Files end with a newline that is not part of a text message.
            Channel::Sms => Rendered::Sms {
                body: text(Part::Body).trim().to_owned(),
            },
            Channel::Voice => Rendered::Voice {
                text: text(Part::Body).trim().to_owned(),
                language,
            },
            Channel::Email => Rendered::Email {
                subject: text(Part::Subject).trim().to_owned(),
                text: text(Part::Text),
                html: text(Part::Html),
            },
            Channel::Whatsapp => Rendered::Whatsapp,
        }
    }
}

// Rendered text holds the code: keep it out of any accidental `{:?}`.
impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rendered(***)")
    }
}

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
            // No file: herald renders no WhatsApp message, so no template is asked for or taken.
            Channel::Whatsapp => &[],
        }
    }
}

/// Registry name of a template = its path under `templates.dir` without `.hbs`.
pub fn template_name(channel: Channel, action: Action, locale: &str, part: Part) -> String {
    format!("{}/{}.{}{}", channel.as_str(), action.as_str(), locale, part.suffix())
}

/// One editable template: a channel × action × locale, with one part (sms, voice) or three (email).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateId {
    pub channel: Channel,
    pub action: Action,
    pub locale: Locale,
}

impl TemplateId {
    /// The part's registry name: [`TemplateId::file`] without `.hbs`.
    fn name(&self, part: Part) -> String {
        template_name(self.channel, self.action, self.locale.as_str(), part)
    }

    pub fn file(&self, part: Part) -> String {
        format!("{}.hbs", self.name(part))
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

/// One problem in one template file, positioned when the parser knows where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// What handlebars reports, at parse or at render time.
enum HandlebarsError<'e> {
    Parse(&'e handlebars::TemplateError),
    Render(&'e handlebars::RenderError),
}

impl TemplateProblem {
    fn new(file: &str, position: Option<(usize, usize)>, message: impl Into<String>) -> TemplateProblem {
        TemplateProblem {
            file: file.to_owned(),
            line: position.map(|p| p.0),
            column: position.map(|p| p.1),
            message: message.into(),
        }
    }

    fn at(file: &str, message: impl Into<String>) -> TemplateProblem {
        TemplateProblem::new(file, None, message)
    }

    /// The one reading of a handlebars error: its position, and its reason with the strict-mode one
    /// said plainly.
    fn from_handlebars(file: &str, error: HandlebarsError<'_>) -> TemplateProblem {
        match error {
            // The parser's own words for bad syntax are the grammar tokens it expected: a source
            // [`syntax::explain`] does not recognise gets a pointer to the place instead.
            HandlebarsError::Parse(e) => match e.reason() {
                handlebars::TemplateErrorReason::InvalidSyntax(_) => TemplateProblem::new(
                    file,
                    e.pos(),
                    "this is not valid Handlebars: check that each `{{` has its `}}` and each `{{#block}}` its `{{/block}}`",
                ),
                other => TemplateProblem::new(file, e.pos(), other.to_string()),
            },
            HandlebarsError::Render(e) => {
                let position = e.line_no.zip(e.column_no);
                match e.reason() {
                    handlebars::RenderErrorReason::MissingVariable(Some(name)) => {
                        TemplateProblem::new(file, position, format!("unknown variable `{name}`"))
                    }
                    other => TemplateProblem::new(file, position, other.to_string()),
                }
            }
        }
    }

    /// The message with its line and column, for a reader who already knows the file.
    fn positioned_message(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("line {l}, column {c}: {}", self.message),
            _ => self.message.clone(),
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
    /// A checked template failed on a job's variables.
    #[error("template {name}: {}", .problem.positioned_message())]
    Render {
        name: String,
        problem: TemplateProblem,
        /// Boxed: a render error is large, and every other variant is small.
        #[source]
        source: Box<handlebars::RenderError>,
    },
    /// A part of a job's message came out longer than its channel allows (docs/operations.md, "How long a
    /// message may be"). Says how long, never what.
    #[error("template {name}: {overrun}")]
    TooLong { name: String, overrun: Overrun },
    /// The directory could not be read or written: the templates are fine, the disk is not.
    #[error("{file}: {what}")]
    Io {
        file: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl TemplateError {
    fn render(name: String, source: handlebars::RenderError) -> TemplateError {
        TemplateError::Render {
            problem: TemplateProblem::from_handlebars(&format!("{name}.hbs"), HandlebarsError::Render(&source)),
            name,
            source: Box::new(source),
        }
    }
}

/// A set of templates that passed the checks, and what they should be told.
struct Compiled {
    engine: Engine,
    warnings: Vec<TemplateProblem>,
}

pub struct Templates {
    repository: Repository,
    default_locale: Locale,
    declared: BTreeSet<String>,
    compiled: ArcSwap<Compiled>,
}

impl Templates {
    /// Loads and checks every template under `dir`. Any problem fails the whole load.
    pub fn load(dir: &Path, default_locale: &Locale) -> Result<Templates, TemplateError> {
        Templates::load_with_vars(dir, default_locale, &[])
    }

    /// Writes the templates shipped with herald (compiled into the binary) under `dir`.
    pub fn write_shipped(dir: &Path) -> std::io::Result<()> {
        repository::write_shipped(dir)
    }

    /// [`Templates::load`] with the job variables declared in `templates.vars`.
    pub fn load_with_vars(dir: &Path, default_locale: &Locale, vars: &[String]) -> Result<Templates, TemplateError> {
        let declared = checks::declared_vars(vars)?;
        let repository = Repository::new(dir);
        let compiled = {
            let reading = repository.reading()?;
            compile(reading.files()?, default_locale, &declared)?
        };
        Ok(Templates {
            repository,
            default_locale: default_locale.clone(),
            declared,
            compiled: ArcSwap::from_pointee(compiled),
        })
    }

    /// Re-reads `dir`; on any problem the templates in use stay as they were. Blocking: it reads files
    /// and waits for a save in progress to finish.
    pub fn reload(&self) -> Result<(), TemplateError> {
        let reading = self.repository.reading()?;
        let compiled = compile(reading.files()?, &self.default_locale, &self.declared)?;
        // Put in use under the lock: a save of this process waits for it, so it cannot be overtaken by
        // this older set.
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
        self.compiled.load().engine.render(job, &self.default_locale)
    }

    pub fn dir(&self) -> &Path {
        self.repository.dir()
    }

    /// The template's sources as they are on disk; `None` when no part exists. The parts are read
    /// together: never one part of a save and another of the one before.
    pub fn read(&self, id: &TemplateId) -> Result<Option<Sources>, TemplateError> {
        self.repository.reading()?.sources(id)
    }

    /// Every template in the directory, sorted by channel, action and locale.
    pub fn list(&self) -> std::io::Result<Vec<TemplateId>> {
        self.repository.list()
    }

    /// The shipped default of a template, if it has one.
    pub fn shipped(id: &TemplateId) -> Option<Sources> {
        repository::shipped(id)
    }

    /// Checks a complete set of sources (every part present, each compiling and rendering with sample
    /// variables) and renders it. Problems carry the part's file name and, when known, line and column.
    pub fn preview(&self, id: &TemplateId, sources: &Sources) -> Result<Previewed, Vec<TemplateProblem>> {
        checks::check_template(id, sources, &self.declared)
    }

    /// Saves every part as one change and puts it in use. The whole directory, with these sources in
    /// place, is checked first: nothing is written unless the set in use afterwards is valid, so a
    /// save never ends "written but not live". See [`repository::Writing::write`] for how the parts
    /// change together.
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
        let writing = self.repository.writing()?;
        let compiled = compile(writing.files(&changes)?, &self.default_locale, &self.declared)?;
        writing.write(&changes)?;
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
        self.repository.fingerprint()
    }
}

/// Checks every file of a directory and compiles those that pass. Any problem refuses the whole set.
fn compile(
    files: Vec<Result<Source, TemplateProblem>>,
    default_locale: &Locale,
    declared: &BTreeSet<String>,
) -> Result<Compiled, TemplateError> {
    let mut problems = Vec::new();
    let mut engine = Engine::new(declared.clone());
    let mut warnings = Vec::new();
    for file in files {
        let checked = file.and_then(|f| checks::check_source(&f.id, f.part, &f.text, declared).map(|c| (f, c)));
        match checked {
            Ok((file, checked)) => {
                warnings.extend(checked.warnings);
                engine.register(file.id.name(file.part), file.part, checked.template, checked.vars);
            }
            Err(p) => problems.push(p),
        }
    }
    checks::defaults_present(&engine, default_locale, &mut problems);
    if problems.is_empty() {
        Ok(Compiled { engine, warnings })
    } else {
        Err(TemplateError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A copy of the shipped templates to change.
    pub(super) fn shipped() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for rel in repository::list_files(Path::new("templates")).unwrap() {
            write(
                dir.path(),
                &rel,
                &std::fs::read_to_string(Path::new("templates").join(&rel)).unwrap(),
            );
        }
        dir
    }

    /// The shipped templates with `files` written over them, loaded with `en` as the default locale.
    pub(super) fn load_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Templates) {
        let dir = shipped();
        for (rel, text) in files {
            write(dir.path(), rel, text);
        }
        let templates = Templates::load(dir.path(), &Locale::parse("en").unwrap()).unwrap();
        (dir, templates)
    }

    pub(super) fn job(channel: &str, to: &str, locale: &str) -> Job {
        let json = serde_json::json!({"id": "j", "channel": channel, "to": to, "code": "482913", "user_id": "u",
            "locale": locale, "friendly_name": "Acme", "vars": {"tenant": "acme"}});
        Job::from_json(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn shipped_templates_load() {
        let en = Locale::parse("en").unwrap();
        Templates::load(Path::new("templates"), &en).unwrap();
    }

    /// The shipped `es` and `pt-BR` enrollment SMS were two UCS-2 segments each, billed twice (issue 34).
    /// Every shipped SMS fits one segment with the longest code and a 20-character friendly_name, and
    /// `templates check` has nothing to warn about in them.
    #[test]
    fn every_shipped_sms_is_one_segment() {
        let t = Templates::load(Path::new("templates"), &Locale::parse("en").unwrap()).unwrap();
        assert_eq!(t.warnings(), vec![]);
        let mut over = Vec::new();
        let ids: Vec<TemplateId> = t
            .list()
            .unwrap()
            .into_iter()
            .filter(|id| id.channel == Channel::Sms)
            .collect();
        assert_eq!(ids.len(), 10, "{ids:?}");
        for id in ids {
            let mut j = job("sms", "+14155550123", id.locale.as_str());
            j.action = id.action;
            j.code = crate::job::OtpCode::parse("1234567890").unwrap();
            j.friendly_name = Some("Acme Online Payments".to_owned());
            let Rendered::Sms { body } = t.render(&j).unwrap() else {
                unreachable!()
            };
            let s = crate::sms::segments(&body);
            if s.segments != 1 {
                over.push(format!("{}: {s:?} {body}", id.file(Part::Body)));
            }
        }
        assert!(over.is_empty(), "{over:#?}");
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

    /// docs/templates.md: at run time a job var prints the job's value, or nothing for a job without it
    /// (strict mode does not fail it).
    #[test]
    fn job_vars_render_the_jobs_value_or_nothing() {
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
        std::fs::create_dir(dir.path().join(repository::JOURNAL_FILE.to_owned() + ".tmp")).unwrap();
        assert!(matches!(t.save(&id, &sources), Err(TemplateError::Io { .. })));
    }
}
