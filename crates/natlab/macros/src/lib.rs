//! `#[lab_test]`: a `#[test]` that runs only where the NAT lab can (root and the lab's tools),
//! prints `skipped: NAT lab needs ...` elsewhere, and fails under CI instead of skipping.
//!
//! Written without `syn`: the attribute only prepends one statement to the function body.

use proc_macro::{Delimiter, Group, TokenStream, TokenTree};

/// Marks a NAT-lab test. `#[lab_test]` needs root and the lab's own tools;
/// `#[lab_test("miniupnpd", "stund")]` needs those programs as well.
///
/// Expands to `#[test]` on the function, whose body starts with
/// `if !::natlab::require_lab(&[TOOLS]) { return; }`.
#[proc_macro_attribute]
pub fn lab_test(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut tokens: Vec<TokenTree> = item.into_iter().collect();
    let body = match tokens.pop() {
        Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => g,
        _ => {
            return "compile_error!(\"#[lab_test] goes on a function with a body\");"
                .parse()
                .expect("compile_error tokens");
        }
    };
    let guard: TokenStream = format!("if !::natlab::require_lab(&[{attr}]) {{ return; }}")
        .parse()
        .expect("guard tokens");
    let mut new_body = guard;
    new_body.extend(body.stream());
    let span = body.span();
    let mut body = Group::new(Delimiter::Brace, new_body);
    body.set_span(span);
    let mut out: TokenStream = "#[test]".parse().expect("test attribute");
    out.extend(tokens);
    out.extend([TokenTree::Group(body)]);
    out
}
