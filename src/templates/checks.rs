//! Whether a source may be used: bounds on hostile sources, the syntax-tree walk, a sample render that
//! finds unknown variables (errors) and job variables (warnings), and the rule that an SMS or a call
//! prints the code.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use handlebars::template::{Parameter, Template, TemplateElement};
use serde_json::json;

use super::caps::{self, Cap, Overrun};
use super::engine::{self, BUILT_IN, Engine};
use super::syntax;
use super::{HandlebarsError, Part, Previewed, Rendered, Sources, TemplateError, TemplateId, TemplateProblem};
use crate::job::{Action, Channel, Job, Locale, MAX_BODY, MAX_VAR_VALUE, MAX_VARS};

/// Largest template source, from the directory or the admin API.
pub const MAX_SOURCE: usize = 64 * 1024;
/// Deepest nesting of blocks, `else if` chains and subexpressions. Rendering recurses once per level on
/// whatever thread renders a job, so the bound keeps it far from the end of a 2 MiB worker stack.
pub const MAX_DEPTH: usize = 24;
/// Deepest nesting of `{{#each}}` blocks. Each level multiplies the iterations by the entries it walks (a
/// job's 32 vars, the ~40 top-level names): four levels were a million passes per job, with or without
/// output. Two is more than a message that carries a code needs.
pub const MAX_EACH_NESTING: usize = 2;
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

const SAMPLE_CODE: &str = "123456";
/// The length of each var of the longest job: as many vars as a job may carry, as long as they can be in a
/// job body (16 KiB, of which 512 bytes are left for the other fields and 16 per var for its key and
/// quotes): 480 bytes.
const LONG_VAR: usize = {
    let room = (MAX_BODY - 512) / MAX_VARS - 16;
    if room < MAX_VAR_VALUE { room } else { MAX_VAR_VALUE }
};

/// `templates.vars`, each a name a job's `vars` can carry.
pub(super) fn declared_vars(vars: &[String]) -> Result<BTreeSet<String>, TemplateError> {
    let mut out = BTreeSet::new();
    for v in vars {
        if !is_var_name(v) {
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

fn is_var_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a complete set of sources for one template (every part present, each passing
/// [`check_source`]) and renders it with the sample variables.
pub(super) fn check_template(
    id: &TemplateId,
    sources: &Sources,
    declared: &BTreeSet<String>,
) -> Result<Previewed, Vec<TemplateProblem>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut out = BTreeMap::new();
    for &part in Part::of(id.channel) {
        match sources.get(part.name()) {
            None => problems.push(TemplateProblem::at(
                &id.file(part),
                format!("part `{}` is missing", part.name()),
            )),
            Some(source) => match check_source(id, part, source, declared) {
                Ok(checked) => {
                    warnings.extend(checked.warnings);
                    out.insert(part.name(), checked.output);
                }
                Err(p) => problems.push(p),
            },
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
    let rendered = Rendered::from_parts(
        id.channel,
        |part| out.remove(part.name()).unwrap_or_default(),
        id.locale.clone(),
    );
    Ok(Previewed { rendered, warnings })
}

/// Adds a problem for each channel × action without a template in the default locale (unless its file
/// already has one): every lookup ends there.
pub(super) fn defaults_present(engine: &Engine, default_locale: &Locale, problems: &mut Vec<TemplateProblem>) {
    // WhatsApp has no parts (`Part::of`): nothing is asked for.
    for channel in Channel::ALL {
        for action in Action::ALL {
            let id = TemplateId {
                channel,
                action,
                locale: default_locale.clone(),
            };
            for &part in Part::of(channel) {
                let file = id.file(part);
                if !engine.contains(&id.name(part)) && !problems.iter().any(|p| p.file == file) {
                    problems.push(TemplateProblem::at(
                        &file,
                        "missing: every channel and action needs a template in the default locale",
                    ));
                }
            }
        }
    }
}

/// A source that passed [`check_source`].
pub(super) struct Checked {
    pub template: Template,
    /// Rendered with the sample variables.
    pub output: String,
    /// Variables it prints that are neither built in nor declared.
    pub vars: BTreeSet<String>,
    pub warnings: Vec<TemplateProblem>,
}

impl fmt::Debug for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checked")
            .field("vars", &self.vars)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// Parses one source, checks its structure, and renders it with sample variables, so that syntax
/// errors, forbidden constructs, misspelt variables and an SMS or call without the code are found
/// before a job is. Runs on a thread with a large stack: nothing in `source` can overflow it.
pub(super) fn check_source(
    id: &TemplateId,
    part: Part,
    source: &str,
    declared: &BTreeSet<String>,
) -> Result<Checked, TemplateProblem> {
    let file = id.file(part);
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
            .spawn_scoped(scope, || check_on_this_thread(id, part, source, declared))
            .map_err(|e| TemplateProblem::at(&file, format!("cannot start the checking thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(TemplateProblem::at(&file, "the template could not be checked")))
    })
}

fn check_on_this_thread(
    id: &TemplateId,
    part: Part,
    source: &str,
    declared: &BTreeSet<String>,
) -> Result<Checked, TemplateProblem> {
    let (name, file) = (id.name(part), id.file(part));
    let template = Template::compile_with_name(source, name.clone()).map_err(|e| match syntax::explain(source) {
        Some((position, message)) => TemplateProblem::new(&file, Some(position), message),
        None => TemplateProblem::from_handlebars(&file, HandlebarsError::Parse(&e)),
    })?;
    // On error the (maybe very deep) template is dropped here, on this thread's stack.
    check_tree(&template, 1, 0, None).map_err(|(position, message)| TemplateProblem::new(&file, position, message))?;
    let mut hb = engine::registry(part);
    hb.register_template(&name, template.clone());
    let cap = Cap::of(id.channel, part);
    // Strict mode stops at the first unknown variable: each one that may be a job var (not a misspelt
    // built-in name) becomes a warning and a sample value, and the render is tried again.
    let mut vars = declared.clone();
    let mut found = BTreeSet::new();
    let mut warnings = Vec::new();
    let output = loop {
        let job = sample_job(id, &vars);
        let e = match render(&hb, &name, &job, &id.locale, &vars, cap) {
            Ok(output) => break output,
            Err(caps::Failed::Stopped) => {
                return Err(TemplateProblem::at(
                    &file,
                    format!("with sample variables this {}", Overrun { cap, size: None }),
                ));
            }
            Err(caps::Failed::Render(e)) => e,
        };
        let problem = TemplateProblem::from_handlebars(&file, HandlebarsError::Render(&e));
        let handlebars::RenderErrorReason::MissingVariable(Some(path)) = e.reason() else {
            return Err(problem);
        };
        let var = path.strip_prefix("vars.").unwrap_or(path);
        let root = var.split('.').next().unwrap_or(var);
        if BUILT_IN.contains(&root) {
            // `tenant.nmae`, `code.x`: a built-in used wrongly, never a job var.
            return Err(problem);
        }
        if let Some(built_in) = looks_like_built_in(var) {
            return Err(TemplateProblem {
                message: format!("unknown variable `{path}` (did you mean `{built_in}`?)"),
                ..problem
            });
        }
        if !is_var_name(var) || vars.contains(var) || vars.len() >= 64 {
            return Err(problem);
        }
        warnings.push(TemplateProblem {
            message: format!(
                "`{var}` is not a built-in variable nor declared in templates.vars: it prints the job's \
                 `vars.{var}`, and nothing for a job without it"
            ),
            ..problem
        });
        vars.insert(var.to_owned());
        found.insert(var.to_owned());
    };
    if let Some(overrun) = caps::over(cap, final_text(part, &output), &id.locale) {
        return Err(TemplateProblem::at(
            &file,
            format!("with sample variables this {overrun}"),
        ));
    }
    check_vars_growth(id, part, &hb, &vars)?;
    if id.channel == Channel::Sms {
        warnings.extend(segments_warning(id, &hb, &vars));
    }
    if matches!(id.channel, Channel::Sms | Channel::Voice) {
        let code = match id.channel {
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
                    if id.channel == Channel::Sms { "n" } else { "" },
                    id.channel.as_str()
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

/// Renders `name` for `job` as a job's render does: bounded by `cap`.
fn render(
    hb: &handlebars::Handlebars<'_>,
    name: &str,
    job: &Job,
    locale: &Locale,
    vars: &BTreeSet<String>,
    cap: Cap,
) -> Result<String, caps::Failed> {
    let ctx = handlebars::Context::wraps(engine::context(job, locale, vars)).map_err(caps::Failed::Render)?;
    caps::render(hb, name, &ctx, cap)
}

/// What of a part's output a provider gets: bodies and subjects are trimmed ([`Rendered::from_parts`]).
fn final_text(part: Part, output: &str) -> &str {
    match part {
        Part::Body | Part::Subject => output.trim(),
        Part::Text | Part::Html => output,
    }
}

/// Renders a part for the sample job with as many more vars as a job may carry, as long as they can be
/// ([`LONG_VAR`]; docs/operations.md, "How long a message may be"): over the cap, the output grows with vars the template
/// does not name (`{{#each vars}}`), and would fail every job that carries them. A template that prints
/// the vars it names is as long as they are: a job whose vars make it too long fails alone, at its send.
fn check_vars_growth(
    id: &TemplateId,
    part: Part,
    hb: &handlebars::Handlebars<'_>,
    vars: &BTreeSet<String>,
) -> Result<(), TemplateProblem> {
    let (name, file) = (id.name(part), id.file(part));
    let cap = Cap::of(id.channel, part);
    let long = "x".repeat(LONG_VAR);
    let mut most = vars.clone();
    let mut job = sample_job(id, vars);
    for i in 1.. {
        if most.len() >= MAX_VARS {
            break;
        }
        let filler = format!("sample_var_{i}");
        if most.insert(filler.clone()) {
            job.vars.insert(filler, long.clone());
        }
    }
    let more = most.len() - vars.len();
    if more == 0 {
        return Ok(());
    }
    let what = format!(
        "{more} more var{} of {LONG_VAR} bytes (a job may carry {MAX_VARS} in its {MAX_BODY} bytes)",
        if more == 1 { "" } else { "s" }
    );
    let overrun = match render(hb, &name, &job, &id.locale, &most, cap) {
        Ok(output) => caps::over(cap, final_text(part, &output), &id.locale),
        Err(caps::Failed::Stopped) => Some(Overrun { cap, size: None }),
        Err(caps::Failed::Render(e)) => {
            let problem = TemplateProblem::from_handlebars(&file, HandlebarsError::Render(&e));
            return Err(TemplateProblem {
                message: format!("with {what} it fails: {}", problem.message),
                ..problem
            });
        }
    };
    match overrun {
        None => Ok(()),
        Some(overrun) => Err(TemplateProblem::at(
            &file,
            format!("its output grows with the vars a job carries: with {what} it {overrun}"),
        )),
    }
}

/// The longest code a job may carry, and a `friendly_name` as long as a real brand's: what a one-segment SMS
/// must fit.
const LONG_CODE: &str = "1234567890";
const LONG_FRIENDLY_NAME: &str = "Acme Online Payments";

/// An SMS that a job with a long code and name sends in more than one segment: each segment is billed.
/// A warning, not a refusal: a longer text may be meant.
fn segments_warning(
    id: &TemplateId,
    hb: &handlebars::Handlebars<'_>,
    vars: &BTreeSet<String>,
) -> Option<TemplateProblem> {
    let mut job = sample_job(id, vars);
    job.code = crate::job::OtpCode::parse(LONG_CODE).ok()?;
    job.friendly_name = Some(LONG_FRIENDLY_NAME.to_owned());
    let cap = Cap::of(id.channel, Part::Body);
    let output = render(hb, &id.name(Part::Body), &job, &id.locale, vars, cap).ok()?;
    let s = crate::sms::segments(output.trim());
    (s.segments > 1).then(|| {
        let single = match s.encoding {
            crate::sms::Encoding::Gsm7 => "one segment holds 160",
            crate::sms::Encoding::Ucs2 => "one segment holds 70, and one character outside GSM-7 makes the whole text UCS-2",
        };
        TemplateProblem::at(
            &id.file(Part::Body),
            format!(
                "with a {}-digit code and a {}-character friendly_name the SMS takes {} segments ({}, {} units; {single}): \
                 each segment is billed",
                LONG_CODE.len(),
                LONG_FRIENDLY_NAME.len(),
                s.segments,
                s.encoding.as_str(),
                s.units,
            ),
        )
    })
}

/// The sample variables of a check: every built-in, and each named var set to its own name.
fn sample_job(id: &TemplateId, vars: &BTreeSet<String>) -> Job {
    let json = json!({
        "id": "sample", "channel": id.channel.as_str(),
        "to": if id.channel == Channel::Email { "jane@example.com" } else { "+14155550123" },
        "code": SAMPLE_CODE, "action": id.action.as_str(), "locale": id.locale.as_str(),
        "user_id": "auth0|sample", "friendly_name": "Acme",
    });
    let mut job = Job::from_json(json.to_string().as_bytes()).expect("sample job is valid");
    job.vars = vars.iter().map(|v| (v.clone(), v.clone())).collect();
    job
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
/// [`HELPERS`], nesting deeper than [`MAX_DEPTH`], and `each` in more than [`MAX_EACH_NESTING`] levels of
/// `each` (`eaches`: the `each` blocks around `template`).
fn check_tree(template: &Template, depth: usize, eaches: usize, at: Option<(usize, usize)>) -> Result<(), TreeProblem> {
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
                if let Parameter::Name(n) = &h.name
                    && h.block
                    && h.params.is_empty()
                    && let Some(what) = match n.as_str() {
                        "if" | "unless" => Some("test"),
                        "each" => Some("walk"),
                        "with" => Some("enter"),
                        _ => None,
                    }
                {
                    return Err((
                        at,
                        format!("`{{{{#{n}}}}}` has nothing to {what}: write e.g. `{{{{#{n} friendly_name}}}}`"),
                    ));
                }
                let each = h.block && matches!(&h.name, Parameter::Name(n) if n == "each");
                if each && eaches >= MAX_EACH_NESTING {
                    return Err((
                        at,
                        format!(
                            "`{{{{#each}}}}` nested in more than {MAX_EACH_NESTING} levels of `{{{{#each}}}}`: each \
                             level multiplies the passes over a job's vars"
                        ),
                    ));
                }
                // The inverse (`{{else}}`) runs when there is nothing to walk: not once per entry.
                if let Some(t) = &h.template {
                    check_tree(t, depth + 1, eaches + usize::from(each), at)?;
                }
                if let Some(t) = &h.inverse {
                    check_tree(t, depth + 1, eaches, at)?;
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

#[cfg(test)]
mod tests {
    use super::super::tests::{job, load_with};
    use super::*;

    fn check(channel: Channel, source: &str) -> Result<Checked, TemplateProblem> {
        check_with(channel, source, &BTreeSet::new())
    }

    fn check_with(channel: Channel, source: &str, declared: &BTreeSet<String>) -> Result<Checked, TemplateProblem> {
        let id = TemplateId {
            channel,
            action: Action::Enrollment,
            locale: Locale::parse("en").unwrap(),
        };
        let part = if channel == Channel::Email {
            Part::Text
        } else {
            Part::Body
        };
        check_source(&id, part, source, declared)
    }

    #[test]
    fn conditional_vars_pass_strict_mode() {
        let src = "{{#if vars.tenant}}{{vars.tenant}}{{/if}} {{tenant.friendly_name}} {{message_type}}";
        check(Channel::Sms, &format!("{src} {{{{code}}}}")).unwrap();
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

    /// `templates check` and the admin API said "expected escape, expression, html_expression, …" for a
    /// forgotten `{{/if}}` (issue 34): each common mistake is now a sentence, at the tag to fix.
    #[test]
    fn syntax_mistakes_are_sentences_at_the_tag_to_fix() {
        let cases: &[(&str, (usize, usize), &str)] = &[
            (
                "Hi {{code}}\n\n{{#if friendly_name}} for {{friendly_name}}",
                (3, 1),
                "`{{#if friendly_name}}` is never closed: add `{{/if}}`",
            ),
            (
                "{{#each vars}}{{#if this}}{{this}}{{/if}}{{code}}",
                (1, 1),
                "`{{#each vars}}` is never closed: add `{{/each}}`",
            ),
            (
                "{{code}} x {{/if}}",
                (1, 12),
                "`{{/if}}` closes a block that was never opened: remove it, or open it with `{{#if …}}` before",
            ),
            (
                "{{code}}\n{{#if a}}{{#unless b}}x{{/if}}",
                (2, 24),
                "`{{/if}}` is where `{{#unless b}}` (line 2, column 10) needs its `{{/unless}}`: close that block first",
            ),
            (
                "{{code}} {{friendly_name",
                (1, 10),
                "`{{friendly_name` is never closed: add `}}`",
            ),
            (
                "{{friendly_name {{code}}",
                (1, 1),
                "`{{friendly_name` is never closed: add `}}`",
            ),
            (
                "{{code}} {{{friendly_name}}",
                (1, 10),
                "`{{{friendly_name}}` is never closed: add `}}}`",
            ),
            (
                "{{code}} {{#if}}x{{/if}}",
                (1, 10),
                "`{{#if}}` has nothing to test: write e.g. `{{#if friendly_name}}`",
            ),
            (
                "{{code}} {{else}}",
                (1, 10),
                "`{{else}}` is outside any block: it belongs between `{{#if …}}` and `{{/if}}`",
            ),
            (
                "{{code}} {{}}",
                (1, 10),
                "`{{}}` is empty: put a variable or a helper in it",
            ),
            (
                "{{code}}\n  {{shout code}}",
                (2, 3),
                "helper `shout` is not available (templates can use if, unless, each",
            ),
        ];
        for &(source, (line, column), needle) in cases {
            let p = check(Channel::Sms, source)
                .err()
                .unwrap_or_else(|| panic!("accepted {source:?}"));
            assert!(p.message.starts_with(needle), "{source:?}: {p}");
            assert!(!p.message.contains("expected"), "{source:?}: {p}");
            assert_eq!((p.line, p.column), (Some(line), Some(column)), "{source:?}: {p}");
        }
        // The sentence as `templates check` and the admin API's refusal give it.
        let p = check(Channel::Sms, cases[0].0).unwrap_err();
        assert_eq!(
            p.positioned_message(),
            "line 3, column 1: `{{#if friendly_name}}` is never closed: add `{{/if}}`"
        );
        assert_eq!(
            p.to_string(),
            "sms/enrollment.en.hbs:3:1: `{{#if friendly_name}}` is never closed: add `{{/if}}`"
        );
        // What the walk does not recognise still points at the place, in words.
        let p = check(Channel::Sms, "{{code}} {{#if a}}{{else}}{{else}}{{/if}} {{> }}").unwrap_err();
        assert!(!p.message.contains("expected") && p.line.is_some(), "{p}");
        // Valid sources, as shipped and with every kind of tag, are not mistaken for mistakes.
        let valid = "\\{{literal}} {{! c }} {{!-- }} --}} {{{code}}} {{~#if a~}}x{{^}}y{{/if}} \
                     {{#each vars}}{{@key}}{{else}}none{{/each}} {{#unless a}}{{else if b}}{{/unless}}";
        assert!(Template::compile(valid).is_ok());
        assert_eq!(syntax::explain(valid), None);
        for rel in super::super::repository::list_files(std::path::Path::new("templates")).unwrap() {
            let source = std::fs::read_to_string(std::path::Path::new("templates").join(&rel)).unwrap();
            assert_eq!(syntax::explain(&source), None, "{rel}");
        }
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
        let (_dir, t) = load_with(&[("sms/enrollment.en.hbs", &source)]);
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
        let mut hb = engine::registry(Part::Body);
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

    /// A template whose output multiplies with the job's vars passed the check with the sample's none, then
    /// sent a 1 MB SMS for a job with 32 (issue 31). Refused now, whatever the channel, with what it would
    /// render for the longest job; one that prints the vars it names, or only their names, is not.
    #[test]
    fn a_template_whose_output_grows_with_the_vars_is_refused() {
        let four_deep = "{{#each vars}}{{#each ../vars}}{{#each ../../vars}}{{#each ../../../vars}}{{this}}\
                         {{/each}}{{/each}}{{/each}}{{/each}}{{code}}";
        let three_deep = "{{#each this}}{{#each vars}}{{else}}{{#each tenant}}{{/each}}{{/each}}{{#each vars}}\
                          {{#each ../vars}}{{#each ../../vars}}{{/each}}{{/each}}{{/each}}{{/each}}{{code}}";
        let two_deep = "{{#each vars}}{{#each ../vars}}{{this}}{{/each}}{{/each}}{{code}}";
        let refused = [
            (Channel::Sms, four_deep, "nested in more than 2 levels of `{{#each}}`"),
            (Channel::Email, four_deep, "nested in more than 2 levels of `{{#each}}`"),
            (Channel::Sms, three_deep, "nested in more than 2 levels of `{{#each}}`"),
            (
                Channel::Sms,
                "{{#each vars}}{{this}}{{/each}}{{code}}",
                "its output grows with the vars a job carries: with 32 more vars of 480 bytes (a job may \
                 carry 32 in its 16384 bytes) it renders more than the 1600 characters an SMS may have \
                 (Twilio's limit) (the render was stopped at 6400 bytes)",
            ),
            (
                Channel::Voice,
                "{{pause}}{{code}}{{#each this}}{{this}}{{/each}}",
                "more than the 4000 characters a call's TwiML may have",
            ),
            (
                Channel::Email,
                two_deep,
                "more than the 262144 bytes an email part may have",
            ),
        ];
        for (channel, source, needle) in refused {
            let p = check(channel, source)
                .err()
                .unwrap_or_else(|| panic!("{channel:?} accepted {source}"));
            assert!(p.message.contains(needle), "{channel:?} {source}: {p}");
        }
        let declared: BTreeSet<String> = ["brand".to_owned()].into();
        let err = check_with(
            Channel::Sms,
            "{{brand}}{{#each vars}}{{this}}{{/each}}{{code}}",
            &declared,
        )
        .unwrap_err();
        assert!(err.message.contains("with 31 more vars"), "{err}");
        for (channel, source) in [
            (Channel::Sms, "{{brand}} {{team}} {{tenant.friendly_name}}: {{code}}"),
            (Channel::Sms, "{{#each vars}}{{@key}} {{/each}}{{code}}"),
            (Channel::Voice, "{{#each vars}}{{@key}}{{/each}}{{pause}}{{code}}"),
            (Channel::Email, "{{#each vars}}{{@key}}={{this}}{{/each}}"),
            (
                Channel::Email,
                "{{#each vars}}{{#each ../tenant}}{{this}}{{/each}}{{/each}}",
            ),
        ] {
            check(channel, source).unwrap_or_else(|p| panic!("{channel:?} refused {source}: {p}"));
        }
    }

    /// What the sample job renders must fit the channel too, in the channel's unit: SMS characters, the
    /// TwiML Twilio gets for a call, email subject characters and part bytes.
    #[test]
    fn a_template_too_long_with_sample_variables_is_refused() {
        let cases = [
            (
                Channel::Sms,
                Part::Body,
                format!("{{{{code}}}}{}", "é".repeat(1594)),
                None,
            ),
            (
                Channel::Sms,
                Part::Body,
                format!("{{{{code}}}}{}", "é".repeat(1595)),
                Some("renders 1601 characters, more than the 1600 characters an SMS may have"),
            ),
            (
                Channel::Voice,
                Part::Body,
                format!("{{{{code}}}} {}", "a".repeat(1900)),
                None,
            ),
            (
                Channel::Voice,
                Part::Body,
                format!("{{{{code}}}} {}", "&".repeat(700)),
                Some("more than the 4000 characters a call's TwiML may have (Twilio's limit)"),
            ),
            (Channel::Email, Part::Subject, "s".repeat(998), None),
            (
                Channel::Email,
                Part::Subject,
                "s".repeat(999),
                Some("renders 999 characters, more than the 998 characters an email subject may have"),
            ),
            (Channel::Email, Part::Html, "h".repeat(MAX_SOURCE / 2), None),
        ];
        let id = TemplateId {
            channel: Channel::Sms,
            action: Action::Enrollment,
            locale: Locale::parse("en").unwrap(),
        };
        for (channel, part, source, refused) in cases {
            let id = TemplateId { channel, ..id.clone() };
            match (check_source(&id, part, &source, &BTreeSet::new()), refused) {
                (Ok(_), None) => {}
                (Err(p), Some(needle)) => assert!(p.message.contains(needle), "{channel:?} {part:?}: {p}"),
                (other, _) => panic!("{channel:?} {part:?} {} bytes: {other:?}", source.len()),
            }
        }
    }

    /// docs/templates.md: each key of `vars` is a variable. Declared names check clean, others are warnings,
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
    }
}
