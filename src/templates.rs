//! Message templates (contract §7): Handlebars in strict mode, one file per channel × action × locale,
//! looked up with locale fallback (`es-AR` → `es` → default locale).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use handlebars::Handlebars;
use serde_json::{Map, Value, json};

use crate::job::{Action, Channel, Job, Locale};

/// Marker that `{{pause}}` leaves in rendered voice text; the voice provider turns it into a pause.
/// Control characters cannot come from a job (they are rejected there), so it cannot be forged.
pub const PAUSE: &str = "\u{1}pause\u{1}";

/// What a template renders to, per channel.
#[derive(Clone, PartialEq, Eq)]
pub enum Rendered {
    Sms {
        body: String,
    },
    Voice {
        text: String,
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
}

/// Compiled templates. Text templates (sms, voice, email subject and text) are not escaped; HTML email
/// templates escape every variable.
struct Compiled {
    text: Handlebars<'static>,
    html: Handlebars<'static>,
    names: HashSet<String>,
}

pub struct Templates {
    dir: PathBuf,
    default_locale: Locale,
    compiled: ArcSwap<Compiled>,
}

fn registry(escape: bool) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    if !escape {
        hb.register_escape_fn(handlebars::no_escape);
    }
    hb
}

impl Templates {
    /// Loads and checks every template under `dir`. Any problem fails the whole load.
    pub fn load(dir: &Path, default_locale: &Locale) -> Result<Templates, TemplateError> {
        let compiled = compile_dir(dir, default_locale)?;
        Ok(Templates {
            dir: dir.to_owned(),
            default_locale: default_locale.clone(),
            compiled: ArcSwap::from_pointee(compiled),
        })
    }

    /// Re-reads `dir`; on any problem the templates in use stay as they were.
    pub fn reload(&self) -> Result<(), TemplateError> {
        let compiled = compile_dir(&self.dir, &self.default_locale)?;
        self.compiled.store(Arc::new(compiled));
        Ok(())
    }

    pub fn default_locale(&self) -> &Locale {
        &self.default_locale
    }

    /// Renders every part the job's channel needs.
    pub fn render(&self, job: &Job) -> Result<Rendered, TemplateError> {
        let compiled = self.compiled.load();
        // Owned by handlebars' context as it is: `render(name, &value)` would copy it once per part.
        let ctx = handlebars::Context::from(context(job, &self.default_locale));
        let locale = job.locale.as_ref().unwrap_or(&self.default_locale);
        let part = |part: Part| -> Result<String, TemplateError> {
            let name = locale
                .fallbacks()
                .chain(std::iter::once(self.default_locale.as_str()))
                .map(|l| template_name(job.channel, job.action, l, part))
                .find(|n| compiled.names.contains(n))
                .ok_or_else(|| TemplateError::Missing(template_name(job.channel, job.action, "*", part)))?;
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
            },
            Channel::Email => Rendered::Email {
                subject: part(Part::Subject)?.trim().to_owned(),
                text: part(Part::Text)?,
                html: part(Part::Html)?,
            },
        })
    }
}

/// The variables a template sees (contract §7), Auth0 names included.
fn context(job: &Job, default_locale: &Locale) -> Value {
    let mut map = Map::new();
    // Job vars first, so that the built-in names below win on a collision.
    for (k, v) in &job.vars {
        map.insert(k.clone(), Value::String(v.clone()));
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
    map.insert("vars".into(), serde_json::to_value(&job.vars).unwrap_or_default());
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
}

/// The sources of a template's parts, by part name.
pub type Sources = std::collections::BTreeMap<&'static str, String>;

impl Templates {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The template's sources as they are on disk; `None` when no part exists.
    pub fn read(&self, id: &TemplateId) -> std::io::Result<Option<Sources>> {
        let mut sources = Sources::new();
        for &part in Part::of(id.channel) {
            match std::fs::read_to_string(self.dir.join(id.file(part))) {
                Ok(text) => {
                    sources.insert(part.name(), text);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
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

    /// Checks a complete set of sources: every part present, each compiling and rendering with sample
    /// variables. Problems carry the part's file name and, when known, line and column.
    pub fn validate(id: &TemplateId, sources: &Sources) -> Result<(), Vec<TemplateProblem>> {
        let mut problems = Vec::new();
        for &part in Part::of(id.channel) {
            let name = template_name(id.channel, id.action, id.locale.as_str(), part);
            match sources.get(part.name()) {
                None => problems.push(TemplateProblem {
                    file: format!("{name}.hbs"),
                    line: None,
                    column: None,
                    message: format!("part `{}` is missing", part.name()),
                }),
                Some(source) => {
                    if let Err(p) = check_source(&name, source, id.channel, id.action, &id.locale, part) {
                        problems.push(p);
                    }
                }
            }
        }
        for key in sources.keys() {
            if !Part::of(id.channel).iter().any(|p| p.name() == *key) {
                problems.push(TemplateProblem {
                    file: id.file(Part::of(id.channel)[0]),
                    line: None,
                    column: None,
                    message: format!("`{key}` is not a part of a {} template", id.channel.as_str()),
                });
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// Renders sources (already validated) with the sample variables.
    pub fn preview(id: &TemplateId, sources: &Sources) -> Result<Rendered, Vec<TemplateProblem>> {
        Templates::validate(id, sources)?;
        let job = sample_job(id.channel, id.action, &id.locale);
        let ctx = context(&job, &id.locale);
        let render = |part: Part| -> Result<String, Vec<TemplateProblem>> {
            let name = template_name(id.channel, id.action, id.locale.as_str(), part);
            let mut hb = registry(part != Part::Html);
            let source = sources.get(part.name()).map(String::as_str).unwrap_or_default();
            hb.register_template_string(&name, source).map_err(|e| {
                vec![TemplateProblem {
                    file: format!("{name}.hbs"),
                    line: None,
                    column: None,
                    message: e.to_string(),
                }]
            })?;
            hb.render(&name, &ctx).map_err(|e| {
                vec![TemplateProblem {
                    file: format!("{name}.hbs"),
                    line: e.line_no,
                    column: e.column_no,
                    message: reason(&e),
                }]
            })
        };
        Ok(match id.channel {
            Channel::Sms => Rendered::Sms {
                body: render(Part::Body)?.trim().to_owned(),
            },
            Channel::Voice => Rendered::Voice {
                text: render(Part::Body)?.trim().to_owned(),
            },
            Channel::Email => Rendered::Email {
                subject: render(Part::Subject)?.trim().to_owned(),
                text: render(Part::Text)?,
                html: render(Part::Html)?,
            },
        })
    }

    /// Writes every part atomically (temp file, fsync, rename, fsync of the directory), then reloads so
    /// the next job uses it. Call [`Templates::validate`] first.
    pub fn save(&self, id: &TemplateId, sources: &Sources) -> Result<(), TemplateError> {
        for &part in Part::of(id.channel) {
            if let Some(text) = sources.get(part.name()) {
                write_atomically(&self.dir.join(id.file(part)), text.as_bytes()).map_err(io_problem(id.file(part)))?;
            }
        }
        self.reload()
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
                    return Err(TemplateError::Invalid(vec![TemplateProblem {
                        file: id.file(Part::of(id.channel)[0]),
                        line: None,
                        column: None,
                        message: "the default locale's template cannot be removed: every job falls back to it".into(),
                    }]));
                }
                for &part in Part::of(id.channel) {
                    match std::fs::remove_file(self.dir.join(id.file(part))) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(io_problem(id.file(part))(e));
                        }
                        _ => {}
                    }
                }
                self.reload()?;
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

fn io_problem(file: String) -> impl Fn(std::io::Error) -> TemplateError {
    move |e| {
        TemplateError::Invalid(vec![TemplateProblem {
            file: file.clone(),
            line: None,
            column: None,
            message: format!("cannot write: {e}"),
        }])
    }
}

/// Temp file in the same directory, fsync, rename over the target, fsync the directory: a crash leaves
/// the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("template"),
        fastrand::u64(..)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A sample job for validating templates: every built-in variable present, `vars` empty.
pub fn sample_job(channel: Channel, action: Action, locale: &Locale) -> Job {
    let json = json!({
        "id": "sample", "channel": channel.as_str(),
        "to": if channel == Channel::Email { "jane@example.com" } else { "+14155550123" },
        "code": "123456", "action": action.as_str(), "locale": locale.as_str(),
        "user_id": "auth0|sample", "friendly_name": "Acme",
    });
    Job::from_json(json.to_string().as_bytes()).expect("sample job is valid")
}

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

/// Compiles one template source and renders it with sample variables, so that both syntax errors and
/// unknown variables are found before a job is.
pub fn check_source(
    name: &str,
    source: &str,
    channel: Channel,
    action: Action,
    locale: &Locale,
    part: Part,
) -> Result<(), TemplateProblem> {
    let mut hb = registry(part != Part::Html);
    let file = format!("{name}.hbs");
    hb.register_template_string(name, source).map_err(|e| {
        let (line, column) = e.pos().map_or((None, None), |(l, c)| (Some(l), Some(c)));
        TemplateProblem {
            file: file.clone(),
            line,
            column,
            message: e.reason().to_string(),
        }
    })?;
    let job = sample_job(channel, action, locale);
    hb.render(name, &context(&job, locale)).map_err(|e| TemplateProblem {
        file,
        line: e.line_no,
        column: e.column_no,
        message: reason(&e),
    })?;
    Ok(())
}

fn compile_dir(dir: &Path, default_locale: &Locale) -> Result<Compiled, TemplateError> {
    let mut problems = Vec::new();
    let mut compiled = Compiled {
        text: registry(false),
        html: registry(true),
        names: HashSet::new(),
    };
    let files = list_files(dir).map_err(|e| {
        TemplateError::Invalid(vec![TemplateProblem {
            file: dir.display().to_string(),
            line: None,
            column: None,
            message: format!("cannot read templates directory: {e}"),
        }])
    })?;
    for rel in files {
        let problem = |message: String| TemplateProblem {
            file: rel.clone(),
            line: None,
            column: None,
            message,
        };
        let (channel, action, locale, part) = match parse_file_name(&rel) {
            Ok(parsed) => parsed,
            Err(e) => {
                problems.push(problem(e));
                continue;
            }
        };
        let source = match std::fs::read_to_string(dir.join(&rel)) {
            Ok(s) => s,
            Err(e) => {
                problems.push(problem(format!("cannot read: {e}")));
                continue;
            }
        };
        let name = template_name(channel, action, locale.as_str(), part);
        if let Err(p) = check_source(&name, &source, channel, action, &locale, part) {
            problems.push(p);
            continue;
        }
        let hb = if part == Part::Html {
            &mut compiled.html
        } else {
            &mut compiled.text
        };
        // Already compiled once by check_source: this cannot fail.
        if let Err(e) = hb.register_template_string(&name, &source) {
            problems.push(problem(e.to_string()));
        }
        compiled.names.insert(name);
    }
    for channel in Channel::ALL {
        for action in Action::ALL {
            for &part in Part::of(channel) {
                let name = template_name(channel, action, default_locale.as_str(), part);
                if !compiled.names.contains(&name) && !problems.iter().any(|p| p.file == format!("{name}.hbs")) {
                    problems.push(TemplateProblem {
                        file: format!("{name}.hbs"),
                        line: None,
                        column: None,
                        message: "missing: every channel and action needs a template in the default locale".into(),
                    });
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
        let Rendered::Voice { text } = t.render(&job("voice", "+14155550123", "en")).unwrap() else {
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
            src,
            Channel::Sms,
            Action::Enrollment,
            &en,
            Part::Body,
        )
        .unwrap();
    }
}
