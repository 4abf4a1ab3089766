//! Inclusive XML canonicalization (W3C C14N 1.1 without comments), for the XML signatures of
//! NVIDIA's reference integrity manifests. Pure.
//!
//! Only what a signed manifest needs, and every document outside it is refused rather than
//! canonicalized wrongly: no DTD (so no entities or default attributes), no processing
//! instructions, and no `xml:` attributes (whose inheritance into a subset is where C14N 1.0 and
//! 1.1 differ). Within that, the output is the standard's: namespace declarations in scope on
//! the apex, each later one only where it changes, sorted; attributes sorted by namespace and
//! name; empty elements as start and end tags; text and attribute values escaped as the standard
//! says; comments dropped.

use roxmltree::{Document, Node, NodeType, ParsingOptions};

const XML_NAMESPACE: &str = "http://www.w3.org/XML/1998/namespace";
/// A manifest is a few hundred elements; anything far larger is not one.
const MAX_NODES: u32 = 20_000;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct C14nError(pub String);

/// Parses a document with the limits canonicalization assumes.
pub fn parse(text: &str) -> Result<Document<'_>, C14nError> {
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let document = Document::parse_with_options(text, options)
        .map_err(|e| C14nError(format!("is not well-formed XML: {e}")))?;
    for node in document.descendants() {
        if node.node_type() == NodeType::PI {
            return Err(C14nError(
                "holds a processing instruction, which a manifest does not".into(),
            ));
        }
        if node
            .attributes()
            .any(|a| a.namespace() == Some(XML_NAMESPACE))
        {
            return Err(C14nError(format!(
                "<{}> carries an xml: attribute, which a manifest does not",
                node.tag_name().name()
            )));
        }
    }
    Ok(document)
}

/// The canonical form of `apex` and its descendants, leaving out `omit` (an enveloped
/// signature) with everything in it.
pub fn canonicalize(text: &str, apex: Node<'_, '_>, omit: Option<Node<'_, '_>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    element(text, apex, None, omit, &mut out);
    out
}

fn element(
    text: &str,
    node: Node<'_, '_>,
    parent: Option<Node<'_, '_>>,
    omit: Option<Node<'_, '_>>,
    out: &mut Vec<u8>,
) {
    let name = qualified_name(text, node.range().start + 1);
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());

    // Declarations: those in scope that the output parent does not already have.
    let mut declarations: Vec<(&str, &str)> = node
        .namespaces()
        .map(|ns| (ns.name().unwrap_or(""), ns.uri()))
        .filter(|&(prefix, uri)| prefix != "xml" && !(prefix.is_empty() && uri.is_empty()))
        .filter(|&(prefix, uri)| {
            parent.is_none_or(|p| p.lookup_namespace_uri(non_empty(prefix)) != Some(uri))
        })
        .collect();
    // An element out of a default namespace its output parent is in undeclares it.
    if let Some(p) = parent
        && node.lookup_namespace_uri(None).is_none_or(str::is_empty)
        && p.lookup_namespace_uri(None)
            .is_some_and(|uri| !uri.is_empty())
    {
        declarations.push(("", ""));
    }
    declarations.sort_unstable();
    for (prefix, uri) in declarations {
        out.extend_from_slice(if prefix.is_empty() {
            b" xmlns"
        } else {
            b" xmlns:"
        });
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_attribute(uri, out);
        out.push(b'"');
    }

    let mut attributes: Vec<_> = node
        .attributes()
        .map(|a| {
            let written = &text[a.range_qname()];
            (a.namespace().unwrap_or(""), a.name(), written, a.value())
        })
        .collect();
    attributes.sort_unstable_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
    for (_, _, written, value) in attributes {
        out.push(b' ');
        out.extend_from_slice(written.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_attribute(value, out);
        out.push(b'"');
    }
    out.push(b'>');

    for child in node.children() {
        if omit.is_some_and(|o| o == child) {
            continue;
        }
        match child.node_type() {
            NodeType::Element => element(text, child, Some(node), omit, out),
            NodeType::Text => escape_text(child.text().unwrap_or(""), out),
            // Comments are dropped; `parse` refused the rest.
            _ => {}
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
}

fn non_empty(prefix: &str) -> Option<&str> {
    (!prefix.is_empty()).then_some(prefix)
}

/// An element's name as written (with its prefix), read from the source at `at`.
fn qualified_name(text: &str, at: usize) -> &str {
    let rest = &text[at..];
    let end = rest
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
        .unwrap_or(rest.len());
    &rest[..end]
}

fn escape_text(value: &str, out: &mut Vec<u8>) {
    for c in value.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            c => push_char(c, out),
        }
    }
}

fn escape_attribute(value: &str, out: &mut Vec<u8>) {
    for c in value.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '"' => out.extend_from_slice(b"&quot;"),
            '\t' => out.extend_from_slice(b"&#x9;"),
            '\n' => out.extend_from_slice(b"&#xA;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            c => push_char(c, out),
        }
    }
}

fn push_char(c: char, out: &mut Vec<u8>) {
    let mut buffer = [0; 4];
    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(text: &str) -> String {
        let document = parse(text).unwrap();
        String::from_utf8(canonicalize(text, document.root_element(), None)).unwrap()
    }

    #[test]
    fn the_standards_rules_for_names_attributes_text_and_empty_elements() {
        // Attributes sorted (no namespace first, then by namespace URI), declarations sorted
        // with the default first, empty elements opened and closed, comments dropped, quotes and
        // whitespace in values escaped (a literal tab is a space after attribute-value
        // normalization, a character reference stays a tab), `>` in text escaped.
        let text = "<?xml version=\"1.0\"?>\n<!-- before -->\n<r xmlns:b=\"urn:b\" xmlns=\"urn:d\" \
                    xmlns:a=\"urn:a\" z='1' b:y=\"2\" a:x=\"&quot;&#9;\t&#xD;\" c=\"&lt;\">\
                    <e/><!-- in -->a &amp; b &gt; c\r\n<a:f  /></r>";
        assert_eq!(
            whole(text),
            "<r xmlns=\"urn:d\" xmlns:a=\"urn:a\" xmlns:b=\"urn:b\" c=\"&lt;\" z=\"1\" \
             a:x=\"&quot;&#x9; &#xD;\" b:y=\"2\"><e></e>a &amp; b &gt; c\n<a:f></a:f></r>"
        );
    }

    #[test]
    fn a_subset_carries_the_declarations_in_scope_and_later_ones_only_where_they_change() {
        let text = "<r xmlns=\"urn:d\" xmlns:p=\"urn:p\"><s xmlns:q=\"urn:q\"><p:t xmlns:p=\"urn:p\">\
                    <u xmlns=\"\"/></p:t></s><o/></r>";
        let document = parse(text).unwrap();
        let s = document.root_element().first_element_child().unwrap();
        assert_eq!(
            String::from_utf8(canonicalize(text, s, None)).unwrap(),
            "<s xmlns=\"urn:d\" xmlns:p=\"urn:p\" xmlns:q=\"urn:q\"><p:t><u xmlns=\"\"></u></p:t></s>"
        );
        let o = s.next_sibling_element().unwrap();
        assert_eq!(
            String::from_utf8(canonicalize(text, document.root_element(), Some(o))).unwrap(),
            "<r xmlns=\"urn:d\" xmlns:p=\"urn:p\"><s xmlns:q=\"urn:q\"><p:t><u xmlns=\"\"></u>\
             </p:t></s></r>"
        );
    }

    #[test]
    fn documents_outside_what_it_canonicalizes_are_refused() {
        for (text, rule) in [
            ("<!DOCTYPE r [<!ENTITY e \"x\">]><r>&e;</r>", "well-formed"),
            ("<r><?pi data?></r>", "processing instruction"),
            ("<r xml:lang=\"en\"/>", "xml: attribute"),
            ("<r>", "well-formed"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.0.contains(rule), "{text}: {error}");
        }
    }
}
