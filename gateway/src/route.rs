//! `google.api.http` path templates and the route table that matches request paths against them.
//!
//! # Grammar
//!
//! Templates follow the `HttpRule` grammar of `google/api/http.proto`:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! - `*` matches exactly one non-empty path segment; `**` matches zero or more (all non-empty).
//! - `{id}` is shorthand for `{id=*}`; a variable binds the path text its sub-pattern matched to
//!   the (possibly nested, `user.id`) request field named by its field path.
//! - `**` may only be the last segment of the template (it may sit inside a variable, as in
//!   `{path=files/**}`, when that variable is last), which keeps matching a single left-to-right
//!   pass with no backtracking.
//! - A LITERAL is a run of RFC 3986 `pchar`s other than `:` (it starts the verb) and `*`/`=`
//!   (grammar tokens); `%XX` escapes are allowed and compared decoded. IDENT is
//!   `[A-Za-z_][A-Za-z0-9_]*`.
//!
//! Corners rejected at parse time (each with an error naming the template): empty segments
//! (`/v1//x`, trailing `/`), `**` anywhere but last, nested variables, empty sub-patterns
//! (`{a=}`), the same field path bound twice, `:` inside a variable, and an empty verb.
//!
//! # Matching
//!
//! [`Router::match_path`] works on the raw (still percent-encoded) path without its query string:
//!
//! - The path is split on `/`. A route with a verb splits the last segment at its last `:`
//!   (`/v1/orders/abc:cancel` is `[v1, orders, abc]` + verb `cancel`); a route without a verb sees
//!   the whole segment, so `/v1/products/a:b` still binds `{id}` to `a:b` (as grpc-gateway does).
//! - A verb is only a verb on the last segment: a `:` in an earlier segment is data
//!   (`/v1/shelves/s:1/books/b1`).
//! - A path that a route with a verb matches, whatever that route's method, is a verb path:
//!   only routes with that verb answer it. So `GET /v1/orders/abc:cancel` is a 405 with
//!   `Allow: POST`, not `GetOrder` of the id `abc:cancel`, and the `Allow` of a verb path never
//!   lists the methods of the verb-less routes its last segment would also fit. A `:suffix` no
//!   route with a verb matches stays data (`/v1/products/a:b`, `/v1/orders/abc:uncancel`).
//! - Empty segments never match, so `/v1/products/` does not match `/v1/products/{id}`.
//! - Literal segments and verbs compare after percent-decoding.
//! - Bound values are percent-decoded per RFC 3986 and must be UTF-8. A single-segment variable
//!   decodes everything. A multi-segment variable (`**` or `{name=shelves/*/books/*}`) leaves
//!   `%2F`/`%2f` encoded, as `http.proto` prescribes and grpc-gateway does: its value keeps real
//!   `/` separators, so a decoded `%2F` would be indistinguishable from a segment boundary.
//! - Routes are first filtered by HTTP method (as grpc-gateway does). When several routes of the
//!   method match, the most specific wins: segments are compared left to right and a literal
//!   beats `*`, which beats `**`; at equal shape a route with a verb beats one without. This makes
//!   the result independent of declaration order (`/v1/products:search` is not shadowed by
//!   `/v1/{name}`, `/v1/files/**` not by `/v1/**`).
//! - If no route of the method matches but routes of other methods do, the result is
//!   [`Match::MethodNotAllowed`] with those methods (for a 405 with `Allow`); otherwise
//!   [`Match::NotFound`].
//!
//! Two routes with the same method, the same segments (literals compared decoded, variable names
//! and boundaries ignored) and the same verb can never be told apart, so [`Router::insert`]
//! rejects the second one with an error naming both routes' labels.
//!
//! The table is built once at start; matching is a scan over the routes (pre-filtered by
//! segment count) that allocates only the bound values.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// The HTTP method of a route: the five `HttpRule` patterns or a `custom` kind.
#[derive(Debug, Clone)]
pub enum Method {
    /// `get`.
    Get,
    /// `post`.
    Post,
    /// `put`.
    Put,
    /// `patch`.
    Patch,
    /// `delete`.
    Delete,
    /// `custom { kind }`, e.g. `HEAD`, `OPTIONS` or an extension method.
    Custom(String),
}

impl Method {
    /// The method for a name: a standard name gives its variant, anything else `Custom`.
    pub fn new(name: &str) -> Self {
        match name {
            "GET" => Self::Get,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            "DELETE" => Self::Delete,
            other => Self::Custom(other.to_owned()),
        }
    }

    /// The method's name as it appears on the wire (case-sensitive).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Custom(kind) => kind,
        }
    }

    /// Whether the name is an RFC 9110 token, i.e. usable as a request method.
    fn is_valid(&self) -> bool {
        let name = self.as_str();
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    }
}

// `Custom("GET")` and `Get` are the same method on the wire.
impl PartialEq for Method {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Method {}

impl std::hash::Hash for Method {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Method {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

/// One segment of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A literal segment, stored percent-decoded.
    Literal(String),
    /// `*`: exactly one non-empty segment.
    Single,
    /// `**`: zero or more non-empty segments (only ever the last segment).
    Multi,
}

impl Segment {
    /// Specificity rank: lower is more specific (0 is kept for "template ended here").
    fn rank(&self) -> u8 {
        match self {
            Self::Literal(_) => 1,
            Self::Single => 2,
            Self::Multi => 3,
        }
    }
}

/// A variable of a template: the field it binds and the segments it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    field_path: Vec<String>,
    segments: Range<usize>,
    multi_segment: bool,
}

impl Variable {
    /// The field path, e.g. `["user", "id"]` for `{user.id}`.
    pub fn field_path(&self) -> &[String] {
        &self.field_path
    }

    /// The indices into [`PathTemplate::segments`] this variable covers.
    pub fn segments(&self) -> Range<usize> {
        self.segments.clone()
    }

    /// Whether the value may span several segments (`**` or more than one segment), in which
    /// case `%2F` stays encoded in it (OpenAPI/Discovery show such variables as `{+name}`).
    pub fn is_multi_segment(&self) -> bool {
        self.multi_segment
    }
}

/// A parsed `google.api.http` path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
    /// The leading literal segments as a matching path without escapes starts (`v1/products/`
    /// of `/v1/products/{id}`): a cheap test that spares most routes a segment-by-segment walk.
    literal_prefix: String,
}

impl PathTemplate {
    /// Parses a template such as `/v1/{name=shelves/*}/books:search`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        Parser::new(template).parse()
    }

    /// The template text as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The segments, with variables expanded into the segments of their sub-patterns.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The variables in order of appearance.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// The verb after the final `:`, percent-decoded, if any.
    pub fn verb(&self) -> Option<&str> {
        self.verb.as_deref()
    }

    /// Number of segments the template needs besides a trailing `**`.
    fn fixed_len(&self) -> usize {
        self.segments.len() - usize::from(self.ends_open())
    }

    /// Whether the last segment is `**`.
    fn ends_open(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::Multi))
    }

    /// Whether two templates match exactly the same paths the same way.
    fn equivalent(&self, other: &Self) -> bool {
        self.segments == other.segments && self.verb == other.verb
    }

    /// Orders two templates that matched the same path: `Less` means `self` is more specific.
    fn specificity(&self, other: &Self) -> Ordering {
        let len = self.segments.len().max(other.segments.len());
        for i in 0..len {
            let a = self.segments.get(i).map_or(0, Segment::rank);
            let b = other.segments.get(i).map_or(0, Segment::rank);
            if a != b {
                return a.cmp(&b);
            }
        }
        other.verb.is_some().cmp(&self.verb.is_some())
    }

    /// Whether the (verb-less) path body matches the segments; allocation-free.
    fn matches(&self, body: &str) -> bool {
        let mut parts = split_segments(body.as_bytes());
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => match parts.next() {
                    Some(part) if decoded_eq(part, literal) => {}
                    _ => return false,
                },
                Segment::Single => match parts.next() {
                    Some(part) if !part.is_empty() => {}
                    _ => return false,
                },
                Segment::Multi => return parts.all(|part| !part.is_empty()),
            }
        }
        parts.next().is_none()
    }
}

impl FromStr for PathTemplate {
    type Err = TemplateError;

    fn from_str(template: &str) -> Result<Self, Self::Err> {
        Self::parse(template)
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A template that does not follow the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path template `{template}`: {reason}")]
pub struct TemplateError {
    /// The template as written.
    pub template: String,
    /// What is wrong with it.
    pub reason: TemplateErrorKind,
}

/// What is wrong with a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateErrorKind {
    /// The template does not start with `/`.
    #[error("must start with `/`")]
    MissingLeadingSlash,
    /// A segment is empty (`//`, a trailing `/`, `{a=}`).
    #[error("empty segment at byte {0}")]
    EmptySegment(usize),
    /// A character not allowed where it appears.
    #[error("unexpected `{ch}` at byte {at}")]
    UnexpectedChar {
        /// The character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// The template ends inside a variable.
    #[error("unclosed `{{` at byte {0}")]
    UnclosedVariable(usize),
    /// A variable inside another variable's sub-pattern.
    #[error("nested variable at byte {0}")]
    NestedVariable(usize),
    /// A field path that is not `IDENT { "." IDENT }`.
    #[error("invalid field path at byte {0}")]
    InvalidFieldPath(usize),
    /// The same field bound twice.
    #[error("field `{0}` is bound twice")]
    DuplicateVariable(String),
    /// `**` followed by further segments.
    #[error("`**` must be the last segment (byte {0})")]
    MultiNotLast(usize),
    /// A `%` not followed by two hex digits, or an escape that decodes to invalid UTF-8.
    #[error("invalid percent-encoding at byte {0}")]
    BadEncoding(usize),
    /// A `:` with nothing after it.
    #[error("empty verb")]
    EmptyVerb,
}

/// A hand-written recursive-descent parser over the template's bytes.
struct Parser<'a> {
    src: &'a str,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Self {
            src,
            pos: 0,
            segments: Vec::new(),
            variables: Vec::new(),
        }
    }

    fn error(&self, reason: TemplateErrorKind) -> TemplateError {
        TemplateError {
            template: self.src.to_owned(),
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn unexpected(&self) -> TemplateError {
        let ch = self
            .src
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
            .unwrap_or('\0');
        self.error(TemplateErrorKind::UnexpectedChar { ch, at: self.pos })
    }

    fn parse(mut self) -> Result<PathTemplate, TemplateError> {
        if self.peek() != Some(b'/') {
            return Err(self.error(TemplateErrorKind::MissingLeadingSlash));
        }
        self.pos += 1;
        self.parse_segments(None)?;
        let verb = if self.peek() == Some(b':') {
            self.pos += 1;
            let verb = self.parse_literal()?;
            if verb.is_empty() {
                return Err(self.error(TemplateErrorKind::EmptyVerb));
            }
            Some(verb)
        } else {
            None
        };
        if self.pos != self.src.len() {
            return Err(self.unexpected());
        }
        let literal_prefix = literal_prefix(&self.segments);
        Ok(PathTemplate {
            source: self.src.to_owned(),
            segments: self.segments,
            variables: self.variables,
            verb,
            literal_prefix,
        })
    }

    /// Parses `Segment { "/" Segment }`, stopping before `:` or the end at the top level, or
    /// before the `}` of the variable opened at byte `variable`.
    fn parse_segments(&mut self, variable: Option<usize>) -> Result<(), TemplateError> {
        loop {
            let start = self.pos;
            if let Some(Segment::Multi) = self.segments.last() {
                return Err(self.error(TemplateErrorKind::MultiNotLast(start)));
            }
            match self.peek() {
                Some(b'*') => {
                    self.pos += 1;
                    if self.peek() == Some(b'*') {
                        self.pos += 1;
                        self.segments.push(Segment::Multi);
                    } else {
                        self.segments.push(Segment::Single);
                    }
                }
                Some(b'{') if variable.is_some() => {
                    return Err(self.error(TemplateErrorKind::NestedVariable(start)));
                }
                Some(b'{') => self.parse_variable()?,
                _ => {
                    let literal = self.parse_literal()?;
                    if literal.is_empty() {
                        return Err(match (self.peek(), variable) {
                            (None, Some(open)) => {
                                self.error(TemplateErrorKind::UnclosedVariable(open))
                            }
                            (None | Some(b'/' | b':'), _) | (Some(b'}'), Some(_)) => {
                                self.error(TemplateErrorKind::EmptySegment(start))
                            }
                            (Some(_), _) => self.unexpected(),
                        });
                    }
                    self.segments.push(Segment::Literal(literal));
                }
            }
            match (self.peek(), variable) {
                (Some(b'/'), _) => self.pos += 1,
                (None | Some(b':'), None) | (Some(b'}'), Some(_)) => return Ok(()),
                (None, Some(open)) => {
                    return Err(self.error(TemplateErrorKind::UnclosedVariable(open)));
                }
                (Some(_), _) => return Err(self.unexpected()),
            }
        }
    }

    /// Parses `"{" FieldPath [ "=" Segments ] "}"` at `{`.
    fn parse_variable(&mut self) -> Result<(), TemplateError> {
        let open = self.pos;
        self.pos += 1;
        let field_path = self.parse_field_path(open)?;
        let dotted = field_path.join(".");
        if self
            .variables
            .iter()
            .any(|v| v.field_path.join(".") == dotted)
        {
            return Err(self.error(TemplateErrorKind::DuplicateVariable(dotted)));
        }
        let first = self.segments.len();
        match self.peek() {
            Some(b'}') => self.segments.push(Segment::Single),
            Some(b'=') => {
                self.pos += 1;
                self.parse_segments(Some(open))?;
            }
            None => return Err(self.error(TemplateErrorKind::UnclosedVariable(open))),
            Some(_) => return Err(self.unexpected()),
        }
        // Both arms leave `pos` at the closing `}`.
        self.pos += 1;
        let segments = first..self.segments.len();
        let multi_segment =
            segments.len() > 1 || matches!(self.segments.last(), Some(Segment::Multi));
        self.variables.push(Variable {
            field_path,
            segments,
            multi_segment,
        });
        Ok(())
    }

    /// Parses `IDENT { "." IDENT }` inside the variable opened at byte `open`.
    fn parse_field_path(&mut self, open: usize) -> Result<Vec<String>, TemplateError> {
        let mut path = Vec::new();
        loop {
            let start = self.pos;
            let bytes = self.src.as_bytes();
            match bytes.get(self.pos) {
                Some(b) if b.is_ascii_alphabetic() || *b == b'_' => self.pos += 1,
                Some(_) => return Err(self.error(TemplateErrorKind::InvalidFieldPath(start))),
                None => return Err(self.error(TemplateErrorKind::UnclosedVariable(open))),
            }
            while bytes
                .get(self.pos)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
            {
                self.pos += 1;
            }
            path.push(self.src[start..self.pos].to_owned());
            if self.peek() == Some(b'.') {
                self.pos += 1;
            } else {
                return Ok(path);
            }
        }
    }

    /// Parses a (possibly empty) LITERAL and returns it percent-decoded.
    fn parse_literal(&mut self) -> Result<String, TemplateError> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if is_literal_byte(b) {
                self.pos += 1;
            } else if b == b'%' {
                let bytes = self.src.as_bytes();
                let valid = bytes.get(self.pos + 1).copied().and_then(hex).is_some()
                    && bytes.get(self.pos + 2).copied().and_then(hex).is_some();
                if !valid {
                    return Err(self.error(TemplateErrorKind::BadEncoding(self.pos)));
                }
                self.pos += 3;
            } else {
                break;
            }
        }
        decode(&self.src[start..self.pos], false)
            .map_err(|_| self.error(TemplateErrorKind::BadEncoding(start)))
    }
}

/// RFC 3986 `pchar` minus `%` (handled apart), `:` (verb), `*` and `=` (grammar tokens).
fn is_literal_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()+,;@".contains(&b)
}

/// A route of the table.
#[derive(Debug)]
pub struct Route<T> {
    method: Method,
    template: PathTemplate,
    label: String,
    value: T,
}

impl<T> Route<T> {
    /// The HTTP method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path template.
    pub fn template(&self) -> &PathTemplate {
        &self.template
    }

    /// The label used in conflict errors (e.g. the gRPC method's full name).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The value the route resolves to.
    pub fn value(&self) -> &T {
        &self.value
    }
}

/// A route that cannot be added to the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The template does not parse.
    #[error("route `{label}`: {source}")]
    Template {
        /// The label of the route.
        label: String,
        /// The parse error.
        source: TemplateError,
    },
    /// The method is not an HTTP token (e.g. an empty `custom` kind).
    #[error("route `{label}`: invalid HTTP method `{method}`")]
    InvalidMethod {
        /// The label of the route.
        label: String,
        /// The method as given.
        method: String,
    },
    /// The route cannot be told apart from one already in the table.
    #[error(
        "conflicting routes: `{existing}` ({method} {existing_template}) and `{new}` \
         ({method} {new_template}) match the same requests"
    )]
    Conflict {
        /// The shared HTTP method.
        method: Method,
        /// The label of the route already in the table.
        existing: String,
        /// Its template.
        existing_template: String,
        /// The label of the rejected route.
        new: String,
        /// Its template.
        new_template: String,
    },
}

/// A request path that cannot be matched because its encoding is broken (a 400, not a 404).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path at byte {0}")]
    MalformedEscape(usize),
    /// A bound value that is not UTF-8 once decoded.
    #[error("path value for `{0}` is not valid UTF-8")]
    NotUtf8(String),
}

/// The outcome of [`Router::match_path`].
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a, T> {
    /// A route matched.
    Found {
        /// The route's value.
        value: &'a T,
        /// The route's label.
        label: &'a str,
        /// Field path and decoded value of each variable, in template order.
        bindings: Vec<(&'a [String], String)>,
    },
    /// Routes match the path, but none for the request's method.
    MethodNotAllowed {
        /// The methods that do match, in table order, without duplicates (for `Allow`).
        allowed: Vec<&'a Method>,
    },
    /// No route matches the path.
    NotFound,
}

/// The route table: built once at start, then matched on every request.
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<Route<T>>,
    /// The positions in `routes` of each method's routes, so that a request is matched
    /// against its own method's routes only.
    by_method: Vec<(Method, Vec<usize>)>,
    has_verbs: bool,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Router<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            routes: Vec::new(),
            by_method: Vec::new(),
            has_verbs: false,
        }
    }

    /// Adds a route; fails on a bad template or method, or a conflict with an existing route.
    pub fn insert(
        &mut self,
        method: Method,
        template: &str,
        label: impl Into<String>,
        value: T,
    ) -> Result<(), RouteError> {
        self.insert_with(method, template, label, |_| value)
    }

    /// [`Router::insert`], with the route's value made from its parsed template (for what
    /// depends on the variables it binds).
    pub fn insert_with(
        &mut self,
        method: Method,
        template: &str,
        label: impl Into<String>,
        value: impl FnOnce(&PathTemplate) -> T,
    ) -> Result<(), RouteError> {
        let label = label.into();
        if !method.is_valid() {
            return Err(RouteError::InvalidMethod {
                label,
                method: method.as_str().to_owned(),
            });
        }
        let template = match PathTemplate::parse(template) {
            Ok(template) => template,
            Err(source) => return Err(RouteError::Template { label, source }),
        };
        if let Some(existing) = self
            .routes
            .iter()
            .find(|r| r.method == method && r.template.equivalent(&template))
        {
            return Err(RouteError::Conflict {
                method,
                existing: existing.label.clone(),
                existing_template: existing.template.source.clone(),
                new: label,
                new_template: template.source,
            });
        }
        self.has_verbs |= template.verb.is_some();
        let position = self.routes.len();
        match self.by_method.iter_mut().find(|(m, _)| *m == method) {
            Some((_, positions)) => positions.push(position),
            None => self.by_method.push((method.clone(), vec![position])),
        }
        let value = value(&template);
        self.routes.push(Route {
            method,
            template,
            label,
            value,
        });
        Ok(())
    }

    /// The routes in insertion order (for OpenAPI generation and logs).
    pub fn routes(&self) -> impl Iterator<Item = &Route<T>> {
        self.routes.iter()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Matches a raw request path (no query string) for a method name such as `"GET"`.
    pub fn match_path(&self, method: &str, path: &str) -> Result<Match<'_, T>, PathError> {
        if let Some(at) = find_bad_escape(path) {
            return Err(PathError::MalformedEscape(at));
        }
        let Some(rest) = path.strip_prefix('/') else {
            return Ok(Match::NotFound);
        };
        let mut candidate = Candidate::new(rest, self.has_verbs);
        candidate.verb_only = candidate.verb_split.is_some()
            && self.routes.iter().any(|route| {
                route.template.verb.is_some() && candidate.matches(&route.template).is_some()
            });

        let mut best: Option<(&Route<T>, &str)> = None;
        let positions = self
            .by_method
            .iter()
            .find(|(m, _)| m.as_str() == method)
            .map_or(&[][..], |(_, positions)| positions.as_slice());
        for route in positions.iter().map(|&i| &self.routes[i]) {
            let Some(body) = candidate.matches(&route.template) else {
                continue;
            };
            let better =
                best.is_none_or(|(b, _)| route.template.specificity(&b.template) == Ordering::Less);
            if better {
                best = Some((route, body));
            }
        }
        if let Some((route, body)) = best {
            return Ok(Match::Found {
                value: &route.value,
                label: &route.label,
                bindings: bind(&route.template, body)?,
            });
        }

        let mut allowed: Vec<&Method> = Vec::new();
        for route in &self.routes {
            if !allowed.contains(&&route.method) && candidate.matches(&route.template).is_some() {
                allowed.push(&route.method);
            }
        }
        Ok(if allowed.is_empty() {
            Match::NotFound
        } else {
            Match::MethodNotAllowed { allowed }
        })
    }
}

/// A request path prepared once for matching against every route.
struct Candidate<'p> {
    /// The path without its leading `/`.
    rest: &'p str,
    rest_len: usize,
    /// The path body and raw verb, when the last segment has a `:`.
    verb_split: Option<(&'p str, &'p str, usize)>,
    /// Whether the path has percent escapes (then literals compare decoded, segment by segment).
    escaped: bool,
    /// Whether a route with a verb matches the path (by any method): then its `:suffix` is a
    /// verb, and routes without one do not match.
    verb_only: bool,
}

impl<'p> Candidate<'p> {
    fn new(rest: &'p str, has_verbs: bool) -> Self {
        // One pass over the bytes (all three are ASCII): the number of `/`, the last `:` after
        // the last `/`, and whether there are escapes.
        let (mut slashes, mut colon, mut escaped) = (0, None, false);
        for (i, b) in rest.bytes().enumerate() {
            match b {
                b'/' => {
                    slashes += 1;
                    colon = None;
                }
                b':' => colon = Some(i),
                b'%' => escaped = true,
                _ => {}
            }
        }
        let count = |body: &str| if body.is_empty() { 0 } else { slashes + 1 };
        // The verb is in the last segment: the body before it has all of the path's `/`.
        let verb_split = colon.filter(|_| has_verbs).map(|colon| {
            let body = &rest[..colon];
            (body, &rest[colon + 1..], count(body))
        });
        Self {
            rest,
            rest_len: count(rest),
            verb_split,
            escaped,
            verb_only: false,
        }
    }

    /// The path body the template's segments matched, if the template matches.
    fn matches(&self, template: &PathTemplate) -> Option<&'p str> {
        let (body, len) = match &template.verb {
            Some(verb) => match self.verb_split {
                Some((body, raw_verb, len)) if decoded_eq(raw_verb.as_bytes(), verb) => (body, len),
                _ => return None,
            },
            None if self.verb_only => return None,
            None => (self.rest, self.rest_len),
        };
        let fits = if template.ends_open() {
            len >= template.fixed_len()
        } else {
            len == template.fixed_len()
        };
        let prefix_fits = self.escaped || body.starts_with(&template.literal_prefix);
        (fits && prefix_fits && template.matches(body)).then_some(body)
    }
}

/// What every escape-free path body matching `segments` starts with: the leading literals, each
/// followed by `/` when a segment that cannot be empty comes after it (`**` may match nothing).
fn literal_prefix(segments: &[Segment]) -> String {
    let mut prefix = String::new();
    for (i, segment) in segments.iter().enumerate() {
        let Segment::Literal(literal) = segment else {
            break;
        };
        prefix.push_str(literal);
        match segments.get(i + 1) {
            Some(Segment::Literal(_) | Segment::Single) => prefix.push('/'),
            Some(Segment::Multi) | None => break,
        }
    }
    prefix
}

// The path helpers below search bytes, not chars: `/` and `%` are ASCII, so a byte search
// finds exactly what a char search would, without the char searcher's set-up on every call.

/// Segments of a path body; an empty body (the path `/`) has none.
fn split_segments(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    (!body.is_empty())
        .then(|| body.split(|&b| b == b'/'))
        .into_iter()
        .flatten()
}

/// Offsets of the `/` of `body`, in order.
fn slashes(body: &str) -> impl Iterator<Item = usize> + '_ {
    body.bytes()
        .enumerate()
        .filter_map(|(i, b)| (b == b'/').then_some(i))
}

/// Byte offset where segment `index` starts (the body's end if there is no such segment).
fn segment_start(body: &str, index: usize) -> usize {
    if index == 0 {
        return 0;
    }
    slashes(body).nth(index - 1).map_or(body.len(), |i| i + 1)
}

/// Byte offset where segment `index` ends.
fn segment_end(body: &str, index: usize) -> usize {
    slashes(body).nth(index).unwrap_or(body.len())
}

/// Decodes the value of every variable of a template that matched `body`.
fn bind<'a>(
    template: &'a PathTemplate,
    body: &str,
) -> Result<Vec<(&'a [String], String)>, PathError> {
    let mut bindings = Vec::with_capacity(template.variables.len());
    for variable in &template.variables {
        let range = &variable.segments;
        let start = segment_start(body, range.start);
        let open = matches!(template.segments.get(range.end - 1), Some(Segment::Multi));
        let end = if open {
            body.len()
        } else {
            segment_end(body, range.end - 1)
        };
        let raw = body.get(start..end.max(start)).unwrap_or("");
        let value = decode(raw, variable.multi_segment)
            .map_err(|_| PathError::NotUtf8(variable.field_path.join(".")))?;
        bindings.push((variable.field_path.as_slice(), value));
    }
    Ok(bindings)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Offset of the first `%` not followed by two hex digits.
fn find_bad_escape(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    bytes.iter().enumerate().find_map(|(i, &b)| {
        let ok = b != b'%'
            || (bytes.get(i + 1).copied().and_then(hex).is_some()
                && bytes.get(i + 2).copied().and_then(hex).is_some());
        (!ok).then_some(i)
    })
}

/// The bytes of a percent-decoded string; a malformed escape yields its `%` as is.
struct Decoded<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        if b == b'%' {
            let hi = self.bytes.get(self.pos + 1).copied().and_then(hex);
            let lo = self.bytes.get(self.pos + 2).copied().and_then(hex);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                self.pos += 3;
                return Some((hi << 4) | lo);
            }
        }
        self.pos += 1;
        Some(b)
    }
}

/// Whether `raw` percent-decodes to `decoded`, without allocating.
fn decoded_eq(raw: &[u8], decoded: &str) -> bool {
    Decoded { bytes: raw, pos: 0 }.eq(decoded.bytes())
}

/// Percent-decodes `raw`; with `keep_slash`, `%2F`/`%2f` are kept as written.
fn decode(raw: &str, keep_slash: bool) -> Result<String, std::string::FromUtf8Error> {
    if !raw.bytes().any(|b| b == b'%') {
        return Ok(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| {
                let hi = bytes.get(i + 1).copied().and_then(hex)?;
                let lo = bytes.get(i + 2).copied().and_then(hex)?;
                Some((hi << 4) | lo)
            })
            .flatten();
        match escaped {
            Some(b'/') if keep_slash => {
                out.extend_from_slice(&bytes[i..i + 3]);
                i += 3;
            }
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- Parsing ----------------------------------------------------------------------------

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.to_owned())
    }

    fn var(path: &str, segments: Range<usize>, multi: bool) -> Variable {
        Variable {
            field_path: path.split('.').map(str::to_owned).collect(),
            segments,
            multi_segment: multi,
        }
    }

    /// Template, expected segments, variables and verb.
    type ParseCase = (
        &'static str,
        Vec<Segment>,
        Vec<Variable>,
        Option<&'static str>,
    );

    #[test]
    fn parses_valid_templates() {
        use Segment::{Multi, Single};
        let cases: Vec<ParseCase> = vec![
            ("/v1/users", vec![lit("v1"), lit("users")], vec![], None),
            (
                "/v1/users/{id}",
                vec![lit("v1"), lit("users"), Single],
                vec![var("id", 2..3, false)],
                None,
            ),
            (
                "/v1/users/{user.id}",
                vec![lit("v1"), lit("users"), Single],
                vec![var("user.id", 2..3, false)],
                None,
            ),
            (
                "/v1/{name=shelves/*}",
                vec![lit("v1"), lit("shelves"), Single],
                vec![var("name", 1..3, true)],
                None,
            ),
            (
                "/v1/{name=shelves/*/books/*}",
                vec![lit("v1"), lit("shelves"), Single, lit("books"), Single],
                vec![var("name", 1..5, true)],
                None,
            ),
            (
                "/v1/files/{path=**}",
                vec![lit("v1"), lit("files"), Multi],
                vec![var("path", 2..3, true)],
                None,
            ),
            ("/v1/**", vec![lit("v1"), Multi], vec![], None),
            ("/v1/*/x", vec![lit("v1"), Single, lit("x")], vec![], None),
            (
                "/v1/orders/{id}:cancel",
                vec![lit("v1"), lit("orders"), Single],
                vec![var("id", 2..3, false)],
                Some("cancel"),
            ),
            (
                "/v1/products:search",
                vec![lit("v1"), lit("products")],
                vec![],
                Some("search"),
            ),
            (
                "/v1/{id=*}",
                vec![lit("v1"), Single],
                vec![var("id", 1..2, false)],
                None,
            ),
            (
                "/v1/{a}/{b_2.c}/{d=x/**}:run",
                vec![lit("v1"), Single, Single, lit("x"), Multi],
                vec![
                    var("a", 1..2, false),
                    var("b_2.c", 2..3, false),
                    var("d", 3..5, true),
                ],
                Some("run"),
            ),
            (
                "/v1/a%20b/x-y_z.~!$&'()+,;@:v%41",
                vec![lit("v1"), lit("a b"), lit("x-y_z.~!$&'()+,;@")],
                vec![],
                Some("vA"),
            ),
            (
                "/{name=**}",
                vec![Multi],
                vec![var("name", 0..1, true)],
                None,
            ),
        ];
        for (src, segments, variables, verb) in cases {
            let t = PathTemplate::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(t.segments(), segments.as_slice(), "{src}");
            assert_eq!(t.variables(), variables.as_slice(), "{src}");
            assert_eq!(t.verb(), verb, "{src}");
            assert_eq!(t.to_string(), src);
            assert_eq!(src.parse::<PathTemplate>().as_ref(), Ok(&t));
        }
    }

    #[test]
    fn rejects_invalid_templates() {
        use TemplateErrorKind as K;
        let ch = |ch, at| K::UnexpectedChar { ch, at };
        let cases = [
            ("", K::MissingLeadingSlash),
            ("v1/x", K::MissingLeadingSlash),
            ("/", K::EmptySegment(1)),
            ("/v1/", K::EmptySegment(4)),
            ("/v1//x", K::EmptySegment(4)),
            ("/v1/{", K::UnclosedVariable(4)),
            ("/v1/{id", K::UnclosedVariable(4)),
            ("/v1/{id=*", K::UnclosedVariable(4)),
            ("/v1/{id=a/", K::UnclosedVariable(4)),
            ("/v1/{}", K::InvalidFieldPath(5)),
            ("/v1/{1a}", K::InvalidFieldPath(5)),
            ("/v1/{a.}", K::InvalidFieldPath(7)),
            ("/v1/{a..b}", K::InvalidFieldPath(7)),
            ("/v1/{a-b}", ch('-', 6)),
            ("/v1/{a=}", K::EmptySegment(7)),
            ("/v1/{a=b/}", K::EmptySegment(9)),
            ("/v1/{a={b}}", K::NestedVariable(7)),
            ("/v1/{id}/{id}", K::DuplicateVariable("id".into())),
            ("/v1/{u.id}/x/{u.id}", K::DuplicateVariable("u.id".into())),
            ("/v1/**/x", K::MultiNotLast(7)),
            ("/**/**", K::MultiNotLast(4)),
            ("/v1/{name=**}/x", K::MultiNotLast(14)),
            ("/v1/{name=shelves/**}/books", K::MultiNotLast(22)),
            ("/v1/{name=**/x}", K::MultiNotLast(13)),
            ("/v1/***", ch('*', 6)),
            ("/v1/a*", ch('*', 5)),
            ("/v1/*a", ch('a', 5)),
            ("/v1/a{id}", ch('{', 5)),
            ("/v1/{id}x", ch('x', 8)),
            ("/v1/a=b", ch('=', 5)),
            ("/v1/{a=b:c}", ch(':', 8)),
            ("/v1/a b", ch(' ', 5)),
            ("/v1/a?b", ch('?', 5)),
            ("/v1/x:", K::EmptyVerb),
            ("/v1/x:a/b", ch('/', 7)),
            ("/v1/x:a:b", ch(':', 7)),
            ("/v1/x:{id}", K::EmptyVerb),
            ("/v1/}", ch('}', 4)),
            ("/v1/%zz", K::BadEncoding(4)),
            ("/v1/%2", K::BadEncoding(4)),
            ("/v1/%FF", K::BadEncoding(4)),
            ("/v1/:x", K::EmptySegment(4)),
        ];
        for (src, reason) in cases {
            let err = PathTemplate::parse(src).expect_err(src);
            assert_eq!(err.reason, reason, "{src}");
            assert_eq!(err.template, src);
            let message = err.to_string();
            assert!(message.contains(&format!("`{src}`")), "{message}");
        }
    }

    // ---- Matching ---------------------------------------------------------------------------

    #[derive(Debug)]
    enum Expect {
        Found(&'static str, &'static [(&'static str, &'static str)]),
        NotAllowed(&'static [&'static str]),
        NotFound,
        Malformed,
        NotUtf8(&'static str),
    }

    fn router(routes: &[(&str, &str, &str)]) -> Router<String> {
        let mut router = Router::new();
        for &(method, template, label) in routes {
            router
                .insert(Method::new(method), template, label, label.to_owned())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        router
    }

    fn check(router: &Router<String>, cases: &[(&str, &str, Expect)]) {
        for (method, path, expect) in cases {
            let got = router.match_path(method, path);
            let ctx = format!("{method} {path}: got {got:?}, want {expect:?}");
            match (expect, got) {
                (
                    Expect::Found(label, want),
                    Ok(Match::Found {
                        value,
                        label: l,
                        bindings,
                    }),
                ) => {
                    assert_eq!((*label, *label), (l, value.as_str()), "{ctx}");
                    let bindings: Vec<(String, &str)> = bindings
                        .iter()
                        .map(|(field, value)| (field.join("."), value.as_str()))
                        .collect();
                    let want: Vec<(String, &str)> =
                        want.iter().map(|&(f, v)| (f.to_owned(), v)).collect();
                    assert_eq!(bindings, want, "{ctx}");
                }
                (Expect::NotAllowed(want), Ok(Match::MethodNotAllowed { allowed })) => {
                    let allowed: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
                    assert_eq!(allowed, *want, "{ctx}");
                }
                (Expect::NotFound, Ok(Match::NotFound))
                | (Expect::Malformed, Err(PathError::MalformedEscape(_))) => {}
                (Expect::NotUtf8(field), Err(PathError::NotUtf8(f))) => {
                    assert_eq!(*field, f, "{ctx}");
                }
                _ => panic!("{ctx}"),
            }
        }
    }

    const API: &[(&str, &str, &str)] = &[
        ("GET", "/v1/users/{id}", "GetUser"),
        ("PATCH", "/v1/users/{user.id}", "UpdateUser"),
        ("DELETE", "/v1/users/{id}", "DeleteUser"),
        ("GET", "/v1/users", "ListUsers"),
        ("GET", "/v1/me", "GetMe"),
        ("GET", "/v1/{name=shelves/*}", "GetShelf"),
        ("GET", "/v1/{name=shelves/*/books/*}", "GetBook"),
        ("GET", "/v1/files/{path=**}", "GetFile"),
        ("GET", "/v1/orders/{id}", "GetOrder"),
        ("POST", "/v1/orders/{id}:cancel", "CancelOrder"),
        ("GET", "/v1/orders", "ListOrders"),
        ("POST", "/v1/orders", "CreateOrder"),
        ("GET", "/v1/products/{id}", "GetProduct"),
        ("GET", "/v1/products:search", "SearchProducts"),
        ("POST", "/v1/products/{id}:restock", "Restock"),
        ("PURGE", "/v1/cache/{key}", "PurgeCache"),
        ("HEAD", "/v1/cache/{key}", "HeadCache"),
        ("PUT", "/v1/{parent=projects/*}/items/{item.id}", "PutItem"),
    ];

    #[test]
    fn matches_api_table() {
        use Expect::*;
        let cases = [
            // Plain and nested bindings.
            ("GET", "/v1/users/42", Found("GetUser", &[("id", "42")])),
            (
                "PATCH",
                "/v1/users/42",
                Found("UpdateUser", &[("user.id", "42")]),
            ),
            (
                "DELETE",
                "/v1/users/42",
                Found("DeleteUser", &[("id", "42")]),
            ),
            ("GET", "/v1/users", Found("ListUsers", &[])),
            ("GET", "/v1/me", Found("GetMe", &[])),
            // 405 with every method that matches the path, in table order.
            (
                "POST",
                "/v1/users/42",
                NotAllowed(&["GET", "PATCH", "DELETE"]),
            ),
            (
                "get",
                "/v1/users/42",
                NotAllowed(&["GET", "PATCH", "DELETE"]),
            ),
            ("DELETE", "/v1/orders", NotAllowed(&["GET", "POST"])),
            ("GET", "/v1/cache/k", NotAllowed(&["PURGE", "HEAD"])),
            // 404: unknown, trailing slash, empty or extra segments, no leading slash.
            ("GET", "/v1/nothing/here", NotFound),
            ("GET", "/v1/users/", NotFound),
            ("GET", "/v1/users//", NotFound),
            ("GET", "/v1/users/42/", NotFound),
            ("GET", "/v1/users/42/extra", NotFound),
            ("GET", "//v1/users/42", NotFound),
            ("GET", "/v1//users", NotFound),
            ("GET", "v1/users/42", NotFound),
            ("GET", "", NotFound),
            ("GET", "/", NotFound),
            ("GET", "/v2/users/42", NotFound),
            // Sub-patterns.
            (
                "GET",
                "/v1/shelves/s1",
                Found("GetShelf", &[("name", "shelves/s1")]),
            ),
            (
                "GET",
                "/v1/shelves/s1/books/b2",
                Found("GetBook", &[("name", "shelves/s1/books/b2")]),
            ),
            ("GET", "/v1/shelves/s1/books", NotFound),
            ("GET", "/v1/shelves/s1/books/", NotFound),
            ("GET", "/v1/shelves", NotFound),
            ("GET", "/v1/racks/s1", NotFound),
            (
                "PUT",
                "/v1/projects/p1/items/i2",
                Found("PutItem", &[("parent", "projects/p1"), ("item.id", "i2")]),
            ),
            // `**`: zero or more non-empty segments.
            (
                "GET",
                "/v1/files/a/b/c.txt",
                Found("GetFile", &[("path", "a/b/c.txt")]),
            ),
            ("GET", "/v1/files/a", Found("GetFile", &[("path", "a")])),
            ("GET", "/v1/files", Found("GetFile", &[("path", "")])),
            ("GET", "/v1/files/", NotFound),
            ("GET", "/v1/files/a//b", NotFound),
            ("GET", "/v1/files/a:b", Found("GetFile", &[("path", "a:b")])),
            // Verbs.
            ("GET", "/v1/orders/abc", Found("GetOrder", &[("id", "abc")])),
            (
                "POST",
                "/v1/orders/abc:cancel",
                Found("CancelOrder", &[("id", "abc")]),
            ),
            (
                "POST",
                "/v1/orders/a:b:cancel",
                Found("CancelOrder", &[("id", "a:b")]),
            ),
            // A path a verb route matches is only that route's: GetOrder does not take
            // `abc:cancel` for an id, and `Allow` names the verb route's method alone.
            ("GET", "/v1/orders/abc:cancel", NotAllowed(&["POST"])),
            ("DELETE", "/v1/orders/abc:cancel", NotAllowed(&["POST"])),
            ("OPTIONS", "/v1/orders/abc:cancel", NotAllowed(&["POST"])),
            ("GET", "/v1/orders/a:b:cancel", NotAllowed(&["POST"])),
            ("GET", "/v1/products/p1:restock", NotAllowed(&["POST"])),
            ("POST", "/v1/orders/abc", NotAllowed(&["GET"])),
            // A suffix no verb route matches is data.
            ("POST", "/v1/orders/abc:uncancel", NotAllowed(&["GET"])),
            (
                "GET",
                "/v1/orders/abc:uncancel",
                Found("GetOrder", &[("id", "abc:uncancel")]),
            ),
            (
                "GET",
                "/v1/users/abc:cancel",
                Found("GetUser", &[("id", "abc:cancel")]),
            ),
            // An empty segment before the verb: the verb route cannot match it, and the path
            // is a verb path for no route.
            ("POST", "/v1/orders/:cancel", NotAllowed(&["GET"])),
            ("POST", "/v1/orders/abc%3Acancel", NotAllowed(&["GET"])),
            (
                "POST",
                "/v1/orders/abc:%63ancel",
                Found("CancelOrder", &[("id", "abc")]),
            ),
            ("POST", "/v1/orders:cancel", NotFound),
            ("POST", "/v1/orders/abc/x:cancel", NotFound),
            (
                "POST",
                "/v1/products/p1:restock",
                Found("Restock", &[("id", "p1")]),
            ),
            // A colon in a value where no verb route applies.
            (
                "GET",
                "/v1/products/a:b",
                Found("GetProduct", &[("id", "a:b")]),
            ),
            (
                "GET",
                "/v1/products/p1",
                Found("GetProduct", &[("id", "p1")]),
            ),
            ("GET", "/v1/products:search", Found("SearchProducts", &[])),
            // A `:` before the last segment is data, never a verb.
            (
                "GET",
                "/v1/shelves/s:1/books/b1",
                Found("GetBook", &[("name", "shelves/s:1/books/b1")]),
            ),
            ("POST", "/v1/orders/abc:cancel/x", NotFound),
            (
                "GET",
                "/v1/files/a:cancel/b",
                Found("GetFile", &[("path", "a:cancel/b")]),
            ),
            ("GET", "/v1/products", NotFound),
            ("POST", "/v1/products:search", NotAllowed(&["GET"])),
            // Custom method kinds.
            (
                "PURGE",
                "/v1/cache/k1",
                Found("PurgeCache", &[("key", "k1")]),
            ),
            ("HEAD", "/v1/cache/k1", Found("HeadCache", &[("key", "k1")])),
            // Percent-decoding: single-segment decodes all, multi-segment keeps %2F.
            ("GET", "/v1/users/a%20b", Found("GetUser", &[("id", "a b")])),
            ("GET", "/v1/users/a%2Fb", Found("GetUser", &[("id", "a/b")])),
            ("GET", "/v1/users/a%2fb", Found("GetUser", &[("id", "a/b")])),
            ("GET", "/v1/users/a+b", Found("GetUser", &[("id", "a+b")])),
            ("GET", "/v1/users/%25", Found("GetUser", &[("id", "%")])),
            (
                "GET",
                "/v1/users/%E2%82%AC",
                Found("GetUser", &[("id", "€")]),
            ),
            ("GET", "/v1/users/€", Found("GetUser", &[("id", "€")])),
            (
                "GET",
                "/v1/files/a%2Fb/c%20d",
                Found("GetFile", &[("path", "a%2Fb/c d")]),
            ),
            (
                "GET",
                "/v1/files/a%2fb",
                Found("GetFile", &[("path", "a%2fb")]),
            ),
            (
                "GET",
                "/v1/shelves/s%2F1/books/b%3A2",
                Found("GetBook", &[("name", "shelves/s%2F1/books/b:2")]),
            ),
            // Literals compare decoded.
            ("GET", "/v1/%75sers/42", Found("GetUser", &[("id", "42")])),
            ("GET", "/%76%31/me", Found("GetMe", &[])),
            ("GET", "/v1/u%73ers%2F42", NotFound),
            // Malformed encoding and non-UTF-8 are errors, not 404s.
            ("GET", "/v1/users/%ZZ", Malformed),
            ("GET", "/v1/users/abc%", Malformed),
            ("GET", "/v1/users/abc%4", Malformed),
            ("GET", "/v1/nothing/%G0", Malformed),
            ("GET", "/v1/users/%E2%82", NotUtf8("id")),
            ("GET", "/v1/users/%FF", NotUtf8("id")),
            ("PATCH", "/v1/users/%C0%AF", NotUtf8("user.id")),
            ("GET", "/v1/files/ok/%80", NotUtf8("path")),
        ];
        check(&router(API), &cases);
        let mut reversed = API.to_vec();
        reversed.reverse();
        let reversed = router(&reversed);
        // Allowed methods follow table order, so only compare outcomes that do not list them.
        let cases: Vec<_> = cases
            .into_iter()
            .filter(|(_, _, e)| !matches!(e, NotAllowed(m) if m.len() > 1))
            .collect();
        check(&reversed, &cases);
    }

    #[test]
    fn prefers_most_specific_route_in_any_order() {
        use Expect::*;
        let routes = [
            ("GET", "/v1/{name}", "GetAny"),
            ("GET", "/v1/{name}:cancel", "CancelAny"),
            ("GET", "/v1/products:search", "SearchProducts"),
            ("GET", "/v1/products/{id}", "GetProduct"),
            ("GET", "/v1/products/featured", "Featured"),
            ("GET", "/v1/products/**", "ProductTree"),
            ("GET", "/v1/**", "CatchAll"),
            ("GET", "/v1/*/x/{rest=**}", "StarThenX"),
            ("GET", "/v1/{a}/{b}/y", "StarStarY"),
            ("GET", "/**", "Root"),
        ];
        let cases = [
            ("GET", "/v1/products:search", Found("SearchProducts", &[])),
            (
                "GET",
                "/v1/orders:search",
                Found("GetAny", &[("name", "orders:search")]),
            ),
            (
                "GET",
                "/v1/o1:cancel",
                Found("CancelAny", &[("name", "o1")]),
            ),
            ("GET", "/v1/other", Found("GetAny", &[("name", "other")])),
            ("GET", "/v1/products/featured", Found("Featured", &[])),
            (
                "GET",
                "/v1/products/p1",
                Found("GetProduct", &[("id", "p1")]),
            ),
            ("GET", "/v1/products/p1/x", Found("ProductTree", &[])),
            ("GET", "/v1/products", Found("ProductTree", &[])),
            ("GET", "/v1/a/b/c", Found("CatchAll", &[])),
            ("GET", "/v1", Found("CatchAll", &[])),
            ("GET", "/v1/q/x/y", Found("StarThenX", &[("rest", "y")])),
            ("GET", "/v1/q/x", Found("StarThenX", &[("rest", "")])),
            ("GET", "/v2/anything", Found("Root", &[])),
            ("GET", "/", Found("Root", &[])),
            (
                "GET",
                "/v1/q/r/y",
                Found("StarStarY", &[("a", "q"), ("b", "r")]),
            ),
            ("POST", "/v1/q", NotAllowed(&["GET"])),
            ("GET", "/v1/", NotFound),
        ];
        check(&router(&routes), &cases);
        let mut reversed = routes.to_vec();
        reversed.reverse();
        check(&router(&reversed), &cases);
    }

    #[test]
    fn the_literal_prefix_spares_the_walk_but_never_a_match() {
        let prefix = |t: &str| PathTemplate::parse(t).unwrap().literal_prefix;
        assert_eq!(prefix("/v1/products/{id}"), "v1/products/");
        assert_eq!(prefix("/v1/products"), "v1/products");
        assert_eq!(prefix("/v1/**"), "v1");
        // A variable's literal segments are literals of the path too.
        assert_eq!(prefix("/v1/{name=shelves/*}/books"), "v1/shelves/");
        assert_eq!(prefix("/{id}"), "");
        // A literal written with escapes still matches: the prefix is not used for such paths.
        let mut router: Router<()> = Router::new();
        router
            .insert(Method::Get, "/v1/users/{id}", "GetUser".to_owned(), ())
            .unwrap();
        assert!(matches!(
            router.match_path("GET", "/v1/%75sers/u1"),
            Ok(Match::Found { .. })
        ));
        assert!(matches!(
            router.match_path("GET", "/v1/userz/u1"),
            Ok(Match::NotFound)
        ));
    }

    #[test]
    fn catch_all_binds_everything() {
        use Expect::*;
        let routes = [
            ("GET", "/v1/**", "V1"),
            ("POST", "/v1/{path=**}:upload", "Upload"),
        ];
        let cases = [
            ("GET", "/v1/a/b%2Fc", Found("V1", &[])),
            (
                "POST",
                "/v1/a/b%2Fc:upload",
                Found("Upload", &[("path", "a/b%2Fc")]),
            ),
            ("POST", "/v1:upload", Found("Upload", &[("path", "")])),
            ("POST", "/v1/a", NotAllowed(&["GET"])),
            ("GET", "/v2/a", NotFound),
        ];
        check(&router(&routes), &cases);
    }

    // ---- Building the table -----------------------------------------------------------------

    #[test]
    fn detects_conflicts_naming_both_routes() {
        let conflicts = [
            (("GET", "/v1/users/{id}"), ("GET", "/v1/users/{uid}")),
            (("GET", "/v1/users/{id}"), ("GET", "/v1/users/*")),
            (("GET", "/v1/{name=shelves/*}"), ("GET", "/v1/shelves/{id}")),
            (("GET", "/v1/{a}/{b}"), ("GET", "/v1/{ab=*/*}")),
            (("GET", "/v1/files/{p=**}"), ("GET", "/v1/files/**")),
            (
                ("POST", "/v1/orders/{id}:cancel"),
                ("POST", "/v1/orders/*:cancel"),
            ),
            (("GET", "/v1/a%20b"), ("GET", "/v1/a%20b")),
            (("GET", "/v1/%61"), ("GET", "/v1/a")),
            (("GET", "/v1/x"), ("GET", "/v1/x")),
        ];
        for ((m1, t1), (m2, t2)) in conflicts {
            let mut router = Router::new();
            router.insert(Method::new(m1), t1, "svc.First", 1).unwrap();
            let err = router
                .insert(Method::new(m2), t2, "svc.Second", 2)
                .expect_err(t2);
            let message = err.to_string();
            for needle in ["svc.First", "svc.Second", t1, t2, m1] {
                assert!(message.contains(needle), "{message} lacks {needle}");
            }
            assert!(matches!(err, RouteError::Conflict { .. }), "{err:?}");
            assert_eq!(router.len(), 1);
        }

        // A custom kind spelled like a standard method is that method.
        let mut router = Router::new();
        router.insert(Method::Get, "/v1/x", "a", 1).unwrap();
        let err = router
            .insert(Method::Custom("GET".into()), "/v1/x", "b", 2)
            .unwrap_err();
        assert!(matches!(err, RouteError::Conflict { .. }), "{err:?}");
    }

    #[test]
    fn accepts_overlapping_but_distinguishable_routes() {
        let ok = [
            (("GET", "/v1/users/{id}"), ("DELETE", "/v1/users/{id}")),
            (
                ("GET", "/v1/orders/{id}"),
                ("GET", "/v1/orders/{id}:cancel"),
            ),
            (
                ("POST", "/v1/orders/{id}:cancel"),
                ("POST", "/v1/orders/{id}:restore"),
            ),
            (("GET", "/v1/a/{x}"), ("GET", "/v1/a/{x=**}")),
            (("GET", "/v1/{name}"), ("GET", "/v1/products")),
            (("GET", "/v1/products"), ("GET", "/v1/products:search")),
            (("PURGE", "/v1/x"), ("GET", "/v1/x")),
        ];
        for ((m1, t1), (m2, t2)) in ok {
            let mut router = Router::new();
            router.insert(Method::new(m1), t1, "first", 1).unwrap();
            router
                .insert(Method::new(m2), t2, "second", 2)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(router.len(), 2);
        }
    }

    #[test]
    fn rejects_bad_routes() {
        let mut router: Router<()> = Router::new();
        let err = router
            .insert(Method::Get, "/v1/{", "svc.Bad", ())
            .unwrap_err();
        assert!(matches!(err, RouteError::Template { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("svc.Bad") && message.contains("`/v1/{`"),
            "{message}"
        );

        for kind in ["", "GE T", "GET\n", "Ä"] {
            let err = router
                .insert(Method::Custom(kind.into()), "/v1/x", "svc.Custom", ())
                .unwrap_err();
            assert!(matches!(err, RouteError::InvalidMethod { .. }), "{err:?}");
            assert!(err.to_string().contains("svc.Custom"));
        }
        assert!(router.is_empty());
    }

    #[test]
    fn methods_normalise_and_display() {
        assert_eq!(Method::new("GET"), Method::Get);
        assert_eq!(Method::from("DELETE"), Method::Delete);
        assert_eq!(Method::new("PURGE"), Method::Custom("PURGE".into()));
        assert_eq!(Method::Custom("PATCH".into()), Method::Patch);
        assert_ne!(Method::new("get"), Method::Get);
        assert_eq!(Method::Put.to_string(), "PUT");
    }

    #[test]
    fn exposes_routes_and_decodes_helpers() {
        let router = router(API);
        let labels: Vec<&str> = router.routes().map(Route::label).collect();
        assert_eq!(labels.len(), API.len());
        assert_eq!(labels[0], "GetUser");
        let first = router.routes().next().unwrap();
        assert_eq!(first.method(), &Method::Get);
        assert_eq!(first.template().as_str(), "/v1/users/{id}");
        assert_eq!(first.value(), "GetUser");

        assert_eq!(decode("a%2Fb%20", true).unwrap(), "a%2Fb ");
        assert_eq!(decode("a%2Fb%20", false).unwrap(), "a/b ");
        assert!(decoded_eq(b"%41b", "Ab"));
        assert!(!decoded_eq(b"%41b", "Abc"));
        assert_eq!(find_bad_escape("/a%2"), Some(2));
        assert_eq!(find_bad_escape("/a%2F"), None);
        assert_eq!(segment_start("a/b/c", 2), 4);
        assert_eq!(segment_start("a/b", 2), 3);
        assert_eq!(segment_end("a/b/c", 1), 3);
    }
}
