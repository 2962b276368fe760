//! The files of `templates.dir`: read and written under a lock that replicas on one volume share, a save
//! of several parts written as one change through a journal, and the shipped defaults.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::checks::MAX_SOURCE;
use super::{Part, Sources, TemplateError, TemplateId, TemplateProblem};
use crate::job::{Action, Channel, Locale};

/// The shipped templates, compiled into the binary: what "revert to default" restores.
static SHIPPED: include_dir::Dir<'static> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/templates");

/// Lock file in `templates.dir`, shared by every herald process using the directory (replicas on one
/// volume): a save holds it exclusively while it writes, a load or read holds it shared while it reads.
const LOCK_FILE: &str = ".herald.lock";
/// Journal of a save in progress: which renames and removals make up the change. A save that dies
/// between its first and last rename is finished by the next process that takes the lock.
pub(super) const JOURNAL_FILE: &str = ".herald.journal";

/// A set of file changes under `templates.dir`: new text, or `None` to remove the file.
pub(super) type Changes = BTreeMap<String, Option<String>>;

/// One template file and its text.
pub(super) struct Source {
    pub id: TemplateId,
    pub part: Part,
    pub text: String,
}

/// The shipped default of a template, if it has one.
pub(super) fn shipped(id: &TemplateId) -> Option<Sources> {
    let mut sources = Sources::new();
    for &part in Part::of(id.channel) {
        let text = SHIPPED.get_file(id.file(part))?.contents_utf8()?;
        sources.insert(part.name(), text.to_owned());
    }
    Some(sources)
}

/// Writes the shipped templates under `dir` (created): for a process that runs without a checkout, such
/// as `herald bench` started from another directory. Herald's own files (`.herald.lock`) are left out.
pub(super) fn write_shipped(dir: &Path) -> std::io::Result<()> {
    fn write(entries: &[include_dir::DirEntry<'static>], dir: &Path) -> std::io::Result<()> {
        for entry in entries {
            let name = entry.path().file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            match entry {
                include_dir::DirEntry::Dir(sub) => write(sub.entries(), dir)?,
                include_dir::DirEntry::File(file) => {
                    let path = dir.join(file.path());
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(path, file.contents())?;
                }
            }
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    write(SHIPPED.entries(), dir)
}

/// `templates.dir`.
pub(super) struct Repository {
    dir: PathBuf,
}

impl Repository {
    pub(super) fn new(dir: &Path) -> Repository {
        Repository { dir: dir.to_owned() }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory under the shared lock: no save changes it until the result is dropped.
    pub(super) fn reading(&self) -> Result<Reading<'_>, TemplateError> {
        Ok(Reading {
            dir: &self.dir,
            _lock: DirLock::shared(&self.dir)?,
        })
    }

    /// The directory under the exclusive lock, for a save.
    pub(super) fn writing(&self) -> Result<Writing<'_>, TemplateError> {
        Ok(Writing(Reading {
            dir: &self.dir,
            _lock: DirLock::exclusive(&self.dir)?,
        }))
    }

    /// Every template in the directory, sorted by channel, action and locale.
    pub(super) fn list(&self) -> std::io::Result<Vec<TemplateId>> {
        let mut ids: Vec<TemplateId> = Vec::new();
        for rel in list_files(&self.dir)? {
            if let Ok((id, _)) = parse_file_name(&rel)
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Changes in the directory (names, sizes, modification times).
    pub(super) fn fingerprint(&self) -> u64 {
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

/// `templates.dir` while it is locked, shared or exclusive.
pub(super) struct Reading<'a> {
    dir: &'a Path,
    _lock: DirLock,
}

impl Reading<'_> {
    /// The sources of one template's parts; `None` when no part exists.
    pub(super) fn sources(&self, id: &TemplateId) -> Result<Option<Sources>, TemplateError> {
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

    /// Every `*.hbs` file, each a template source or why it is not one.
    pub(super) fn files(&self) -> Result<Vec<Result<Source, TemplateProblem>>, TemplateError> {
        self.files_after(&Changes::new())
    }

    /// [`Reading::files`] as they will be once `changes` are written.
    fn files_after(&self, changes: &Changes) -> Result<Vec<Result<Source, TemplateProblem>>, TemplateError> {
        let mut files = list_files(self.dir).map_err(|e| {
            TemplateError::Invalid(vec![TemplateProblem::at(
                &self.dir.display().to_string(),
                format!("cannot read templates directory: {e}"),
            )])
        })?;
        files.retain(|rel| !matches!(changes.get(rel), Some(None)));
        for (rel, text) in changes {
            if text.is_some() && !files.contains(rel) {
                files.push(rel.clone());
            }
        }
        files.sort();
        let source = |rel: &String| -> Result<Source, FileError> {
            let (id, part) = parse_file_name(rel)?;
            let text = match changes.get(rel) {
                Some(Some(text)) => text.clone(),
                _ => read_capped(&self.dir.join(rel))?,
            };
            Ok(Source { id, part, text })
        };
        Ok(files
            .iter()
            .map(|rel| source(rel).map_err(|e| TemplateProblem::at(rel, e.to_string())))
            .collect())
    }
}

/// `templates.dir` under the exclusive lock: what a save reads and writes.
pub(super) struct Writing<'a>(Reading<'a>);

impl Writing<'_> {
    /// [`Reading::files`] as they will be once `changes` are written: what a save checks.
    pub(super) fn files(&self, changes: &Changes) -> Result<Vec<Result<Source, TemplateProblem>>, TemplateError> {
        self.0.files_after(changes)
    }

    /// Writes a set of changes as one: every new part goes to a temp file (fsynced), a journal listing
    /// the renames and removals is written atomically, then they are applied and the journal removed.
    /// Readers hold the shared lock, so they see the set before or after; a crash after the journal is
    /// written is finished by [`roll_forward`], one before it leaves only temp files.
    pub(super) fn write(&self, changes: &Changes) -> Result<(), TemplateError> {
        let dir = self.0.dir;
        let mut journal = String::new();
        let mut temps = Vec::new();
        let result = (|| {
            for (rel, text) in changes {
                match text {
                    Some(text) => {
                        let tmp = temp_name(rel);
                        temps.push(tmp.clone());
                        write_synced(&dir.join(&tmp), text.as_bytes())
                            .map_err(io_error(rel.clone(), "cannot write"))?;
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
}

fn io_error(file: impl Into<String>, what: &'static str) -> impl FnOnce(std::io::Error) -> TemplateError {
    let file = file.into();
    move |source| TemplateError::Io { file, what, source }
}

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

/// Why a file in `templates.dir` is not a template source.
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error("template files end in .hbs")]
    NotHbs,
    #[error("templates live in sms/, voice/ or email/")]
    NoChannelDirectory,
    #[error("unknown channel directory `{0}`")]
    UnknownChannel(String),
    #[error("whatsapp messages are templates Meta approved (meta.template): herald renders none")]
    Whatsapp,
    #[error("unknown action `{0}`")]
    UnknownAction(String),
    #[error("missing locale (action.locale.hbs)")]
    NoLocale,
    #[error(transparent)]
    Locale(crate::job::NotALocale),
    #[error("email templates end in .subject.hbs, .html.hbs or .txt.hbs")]
    EmailPart,
    #[error("sms and voice templates are named action.locale.hbs")]
    BodyPart,
    #[error("too many dots in the file name")]
    TooManyDots,
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("more than the {MAX_SOURCE} bytes allowed")]
    TooLarge,
    #[error("not UTF-8 text")]
    NotUtf8(#[source] std::string::FromUtf8Error),
}

/// Splits `sms/enrollment.es-AR.hbs` into its template and part.
fn parse_file_name(rel: &str) -> Result<(TemplateId, Part), FileError> {
    let rel = rel.strip_suffix(".hbs").ok_or(FileError::NotHbs)?;
    let (channel, rest) = rel.split_once('/').ok_or(FileError::NoChannelDirectory)?;
    let channel = Channel::parse(channel).ok_or_else(|| FileError::UnknownChannel(channel.to_owned()))?;
    if channel == Channel::Whatsapp {
        return Err(FileError::Whatsapp);
    }
    let mut pieces = rest.split('.');
    let action = pieces.next().unwrap_or_default();
    let action = Action::parse(action).ok_or_else(|| FileError::UnknownAction(action.to_owned()))?;
    let locale = Locale::parse(pieces.next().ok_or(FileError::NoLocale)?).map_err(FileError::Locale)?;
    let part = match (channel, pieces.next()) {
        (Channel::Email, Some("subject")) => Part::Subject,
        (Channel::Email, Some("html")) => Part::Html,
        (Channel::Email, Some("txt")) => Part::Text,
        (Channel::Email, _) => return Err(FileError::EmailPart),
        (_, None) => Part::Body,
        (_, Some(_)) => return Err(FileError::BodyPart),
    };
    if pieces.next().is_some() {
        return Err(FileError::TooManyDots);
    }
    let id = TemplateId {
        channel,
        action,
        locale,
    };
    Ok((id, part))
}

/// A template file, read no further than one byte past [`MAX_SOURCE`] (the check then names its size).
fn read_capped(path: &Path) -> Result<String, FileError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SOURCE as u64 + 1).read_to_end(&mut bytes))
        .map_err(FileError::Read)?;
    if bytes.len() > MAX_SOURCE {
        return Err(FileError::TooLarge);
    }
    String::from_utf8(bytes).map_err(FileError::NotUtf8)
}

/// `*.hbs` files one level below `dir`, as `channel/file.hbs` (sorted, for stable reports).
pub(super) fn list_files(dir: &Path) -> std::io::Result<Vec<String>> {
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
    use std::sync::Arc;

    use super::super::tests::{job, shipped, write};
    use super::super::{Rendered, Templates};
    use super::*;

    /// WhatsApp messages are Meta's approved templates: herald asks for no whatsapp template, renders a
    /// whatsapp job without one, and refuses a file that pretends to be one, saying why.
    #[test]
    fn whatsapp_needs_no_template_and_a_whatsapp_file_is_refused() {
        let dir = shipped();
        let en = Locale::parse("en").unwrap();
        let t = Templates::load(dir.path(), &en).unwrap();
        assert_eq!(
            t.render(&job("whatsapp", "+14155550123", "pt-BR")).unwrap(),
            Rendered::Whatsapp
        );
        write(dir.path(), "whatsapp/second-factor-authentication.en.hbs", "{{code}}");
        let Err(crate::templates::TemplateError::Invalid(problems)) = Templates::load(dir.path(), &en) else {
            panic!("a whatsapp template file was taken")
        };
        assert!(problems[0].message.contains("Meta approved"), "{problems:?}");
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
}
