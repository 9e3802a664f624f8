//! A small XML reader, enough for bmap files: one root element with attributes, child elements,
//! text, comments, CDATA, the XML declaration and the five predefined entities plus character
//! references. No DTDs and no namespaces (bmap files have neither).

use std::fmt;

/// A node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data, entities resolved.
    Text(String),
    /// A comment's content (between `<!--` and `-->`).
    Comment(String),
}

/// An element: its name, attributes in document order, and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Tag name.
    pub name: String,
    /// Attributes, values with entities resolved.
    pub attributes: Vec<(String, String)>,
    /// Child nodes in document order.
    pub children: Vec<Node>,
}

impl Element {
    /// The value of attribute `name`.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Child elements named `name`, in order.
    pub fn elements<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter_map(move |c| match c {
            Node::Element(e) if e.name == name => Some(e),
            _ => None,
        })
    }

    /// The first child element named `name`.
    pub fn element(&self, name: &str) -> Option<&Element> {
        self.children.iter().find_map(|c| match c {
            Node::Element(e) if e.name == name => Some(e),
            _ => None,
        })
    }

    /// The element's own text (its text children joined), trimmed.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for c in &self.children {
            if let Node::Text(t) = c {
                s.push_str(t);
            }
        }
        s.trim().to_string()
    }

    /// The element's comments, in order.
    pub fn comments(&self) -> impl Iterator<Item = &str> {
        self.children.iter().filter_map(|c| match c {
            Node::Comment(t) => Some(t.as_str()),
            _ => None,
        })
    }
}

/// Where and why a document is not well-formed XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not well-formed XML at byte {}: {}",
            self.offset, self.reason
        )
    }
}

impl std::error::Error for XmlError {}

/// Parse a document into its root element (comments outside the root are dropped).
pub fn parse(text: &str) -> Result<Element, XmlError> {
    let mut p = Parser { s: text, pos: 0 };
    p.misc()?;
    if !p.rest().starts_with('<') {
        return Err(p.error("expected the root element"));
    }
    let root = p.element()?;
    p.misc()?;
    if p.pos != text.len() {
        return Err(p.error("content after the root element"));
    }
    Ok(root)
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn error(&self, reason: &str) -> XmlError {
        XmlError {
            offset: self.pos,
            reason: reason.to_string(),
        }
    }

    fn skip_space(&mut self) {
        let n = self.rest().len() - self.rest().trim_start().len();
        self.pos += n;
    }

    /// Everything up to `end`, consuming `end` too.
    fn until(&mut self, end: &str, what: &str) -> Result<&'a str, XmlError> {
        match self.rest().find(end) {
            Some(i) => {
                let out = &self.rest()[..i];
                self.pos += i + end.len();
                Ok(out)
            }
            None => Err(self.error(&format!("unterminated {what}"))),
        }
    }

    /// Whitespace, comments, processing instructions and the declaration outside the root.
    fn misc(&mut self) -> Result<(), XmlError> {
        loop {
            self.skip_space();
            if self.rest().starts_with("<?") {
                self.pos += 2;
                self.until("?>", "processing instruction")?;
            } else if self.rest().starts_with("<!--") {
                self.pos += 4;
                self.until("-->", "comment")?;
            } else if self.rest().starts_with("<!") {
                return Err(self.error("DTDs are not supported"));
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<&'a str, XmlError> {
        let n = self
            .rest()
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '>' | '=' | '<'))
            .unwrap_or(self.rest().len());
        if n == 0 {
            return Err(self.error("expected a name"));
        }
        let name = &self.rest()[..n];
        self.pos += n;
        Ok(name)
    }

    fn element(&mut self) -> Result<Element, XmlError> {
        self.pos += 1; // '<'
        let name = self.name()?.to_string();
        let mut attributes = Vec::new();
        loop {
            self.skip_space();
            if self.rest().starts_with("/>") {
                self.pos += 2;
                return Ok(Element {
                    name,
                    attributes,
                    children: Vec::new(),
                });
            }
            if self.rest().starts_with('>') {
                self.pos += 1;
                break;
            }
            let key = self.name()?.to_string();
            self.skip_space();
            if !self.rest().starts_with('=') {
                return Err(self.error(&format!("attribute {key} has no value")));
            }
            self.pos += 1;
            self.skip_space();
            let quote = match self.rest().chars().next() {
                Some(q @ ('"' | '\'')) => q,
                _ => return Err(self.error(&format!("attribute {key}'s value is not quoted"))),
            };
            self.pos += 1;
            let raw = self.until(&quote.to_string(), "attribute value")?;
            let value = self.unescape(raw)?;
            if attributes.iter().any(|(k, _)| *k == key) {
                return Err(self.error(&format!("attribute {key} appears twice")));
            }
            attributes.push((key, value));
        }
        let mut children = Vec::new();
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return Err(self.error(&format!("<{name}> is never closed")));
            } else if rest.starts_with("</") {
                self.pos += 2;
                let end = self.name()?;
                if end != name {
                    return Err(self.error(&format!("</{end}> closes <{name}>")));
                }
                self.skip_space();
                if !self.rest().starts_with('>') {
                    return Err(self.error(&format!("</{end} is not closed with '>'")));
                }
                self.pos += 1;
                return Ok(Element {
                    name,
                    attributes,
                    children,
                });
            } else if rest.starts_with("<!--") {
                self.pos += 4;
                children.push(Node::Comment(self.until("-->", "comment")?.to_string()));
            } else if rest.starts_with("<![CDATA[") {
                self.pos += 9;
                children.push(Node::Text(self.until("]]>", "CDATA section")?.to_string()));
            } else if rest.starts_with("<?") {
                self.pos += 2;
                self.until("?>", "processing instruction")?;
            } else if rest.starts_with('<') {
                children.push(Node::Element(self.element()?));
            } else {
                let n = rest.find('<').unwrap_or(rest.len());
                let raw = &rest[..n];
                let text = self.unescape(raw)?;
                self.pos += n;
                children.push(Node::Text(text));
            }
        }
    }

    fn unescape(&self, raw: &str) -> Result<String, XmlError> {
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(i) = rest.find('&') {
            out.push_str(&rest[..i]);
            let Some(j) = rest[i..].find(';') else {
                return Err(self.error("an '&' without ';'"));
            };
            let entity = &rest[i + 1..i + j];
            let c = match entity {
                "lt" => '<',
                "gt" => '>',
                "amp" => '&',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    let code = if let Some(h) = entity.strip_prefix("#x") {
                        u32::from_str_radix(h, 16).ok()
                    } else if let Some(d) = entity.strip_prefix('#') {
                        d.parse().ok()
                    } else {
                        None
                    };
                    code.and_then(char::from_u32)
                        .ok_or_else(|| self.error(&format!("unknown entity &{entity};")))?
                }
            };
            out.push(c);
            rest = &rest[i + j + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_elements_attributes_text_and_comments() {
        let doc = "<?xml version=\"1.0\" ?>\n<!-- top -->\n<bmap version='2.0'>\n  <!-- note a &amp; b -->\n  <Size> 42 </Size>\n  <Map><Range chksum=\"ab\"> 1-2 </Range><Range chksum=\"cd\">3</Range></Map>\n  <Empty/>\n  <T>&lt;x&gt; &#65;&#x42;<![CDATA[<raw>]]></T>\n</bmap>\n";
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "bmap");
        assert_eq!(root.attribute("version"), Some("2.0"));
        assert_eq!(root.element("Size").unwrap().text(), "42");
        let ranges: Vec<_> = root.element("Map").unwrap().elements("Range").collect();
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[1].attribute("chksum"), Some("cd"));
        assert_eq!(ranges[0].text(), "1-2");
        assert!(root.element("Empty").unwrap().children.is_empty());
        assert_eq!(root.element("T").unwrap().text(), "<x> AB<raw>");
        assert_eq!(root.comments().collect::<Vec<_>>(), [" note a &amp; b "]);
    }

    #[test]
    fn malformed_documents_are_refused() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a x=1></a>",
            "<a x='1' x='2'></a>",
            "<a>&bogus;</a>",
            "<a></a><b></b>",
            "<a><!-- open </a>",
            "<!DOCTYPE a><a></a>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
