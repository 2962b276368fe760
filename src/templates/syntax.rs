//! A source handlebars could not parse, said in words: its parser names the grammar tokens it expected
//! ("expected escape, expression, html_expression, …"), which tells someone who forgot an `{{/if}}`
//! nothing. This walks the `{{…}}` tags of the source with a stack of open blocks and names the first
//! mistake it recognises, where it is.

/// Where (line, column, both from 1) and what: the common mistakes a parse fails on.
pub(super) fn explain(source: &str) -> Option<((usize, usize), String)> {
    let mut open: Vec<Block<'_>> = Vec::new();
    let mut from = 0;
    while let Some(offset) = source[from..].find("{{") {
        let start = from + offset;
        // `\{{` is a literal `{{`.
        if source[..start].ends_with('\\') {
            from = start + 2;
            continue;
        }
        let at = position(source, start);
        let rest = &source[start..];
        if rest.starts_with("{{{{") {
            return None; // raw blocks: rare enough to leave to the parser's words
        }
        let opening = rest.trim_start_matches("{{").trim_start_matches('~');
        // `{{!-- … }}` without `--}}` is a short comment to handlebars.
        let end = if opening.starts_with("!--") && rest.contains("--}}") {
            "--}}"
        } else if opening.starts_with('{') {
            "}}}"
        } else {
            "}}"
        };
        let Some(length) = rest.find(end).map(|i| i + end.len()) else {
            return Some((at, format!("`{}` is never closed: add `{end}`", excerpt(rest))));
        };
        let tag = &rest[..length];
        let inner = tag
            .trim_start_matches('{')
            .trim_end_matches('}')
            .trim_start_matches('~')
            .trim_end_matches('~')
            .trim();
        from = start + length;
        if inner.starts_with('!') {
            continue;
        }
        // `{{code {{friendly_name}}`: the first `{{` has no `}}` of its own.
        if let Some(inside) = tag[2..].find("{{") {
            return Some((
                at,
                format!("`{}` is never closed: add `}}}}`", excerpt(&tag[..2 + inside])),
            ));
        }
        if inner.is_empty() {
            return Some((at, "`{{}}` is empty: put a variable or a helper in it".into()));
        }
        let word = |s: &'_ str| -> String { s.split_whitespace().next().unwrap_or("").to_owned() };
        if let Some(block) = inner.strip_prefix('#').or_else(|| inner.strip_prefix('^')) {
            let block = block.trim_start_matches(['*', '>']).trim_start();
            if block.is_empty() && inner.starts_with('^') {
                // `{{^}}` is `{{else}}`.
                if open.is_empty() {
                    return Some((at, outside_any_block("{{^}}")));
                }
                continue;
            }
            let name = word(block);
            open.push(Block { name, tag, at });
        } else if let Some(closing) = inner.strip_prefix('/') {
            let name = word(closing);
            match open.pop() {
                None => {
                    return Some((
                        at,
                        format!(
                            "`{tag}` closes a block that was never opened: remove it, or open it with `{{{{#{name} …}}}}` before"
                        ),
                    ));
                }
                Some(block) if block.name != name => {
                    return Some((
                        at,
                        format!(
                            "`{tag}` is where `{}` (line {}, column {}) needs its `{{{{/{}}}}}`: close that block first",
                            block.tag, block.at.0, block.at.1, block.name
                        ),
                    ));
                }
                Some(_) => {}
            }
        } else if word(inner) == "else" && open.is_empty() {
            return Some((at, outside_any_block(tag)));
        }
    }
    open.pop().map(|block| {
        (
            block.at,
            format!("`{}` is never closed: add `{{{{/{}}}}}`", block.tag, block.name),
        )
    })
}

/// An opened `{{#name …}}` waiting for its `{{/name}}`.
struct Block<'s> {
    name: String,
    tag: &'s str,
    at: (usize, usize),
}

fn outside_any_block(tag: &str) -> String {
    format!("`{tag}` is outside any block: it belongs between `{{{{#if …}}}}` and `{{{{/if}}}}`")
}

/// The start of an unclosed tag as the reader wrote it: up to the end of its line, at most 40 characters.
fn excerpt(rest: &str) -> String {
    let line = rest.split('\n').next().unwrap_or(rest).trim_end();
    let mut out: String = line.chars().take(40).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out
}

/// Line and column (in characters), from 1, of a byte offset.
fn position(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or(before).chars().count() + 1;
    (line, column)
}
