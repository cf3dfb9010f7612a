//! The rules of the shop: what a valid product and order request are, how a request is hashed
//! for idempotency, how an order takes stock and is priced, and the crate's error type with its
//! single mapping to a gRPC status.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use tonic::Status;
use weft_mesh::validate::{self, FieldError};

/// Longest product name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest product description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Highest unit price, in cents (ten billion units of currency).
pub const MAX_UNIT_PRICE_CENTS: i64 = 1_000_000_000_000;
/// Most units one restock may add.
pub const MAX_STOCK_CHANGE: i64 = 1_000_000_000;
/// Currency of a product created without one.
pub const DEFAULT_CURRENCY: &str = "USD";
/// Most lines in one order.
pub const MAX_ORDER_LINES: usize = 100;
/// Most units of one line.
pub const MAX_LINE_QUANTITY: i64 = 1000;
/// Longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

// === Error ===

/// Why an operation of the order service failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The products of one order are priced in different currencies.
    #[error(
        "items: all products of an order must have the same currency (found {first} and {other})"
    )]
    MixedCurrencies {
        /// The currency of the first product taken.
        first: String,
        /// A different currency met later.
        other: String,
    },
    /// The order's total does not fit in 64 bits.
    #[error("items: the order's total is too large")]
    TotalTooLarge,
    /// No product has this id.
    #[error("product {} not found", weft_mesh::validate::shown_id(.0))]
    ProductNotFound(String),
    /// No order with this id is visible to the caller.
    #[error("order {} not found", weft_mesh::validate::shown_id(.0))]
    OrderNotFound(String),
    /// The product has fewer units in stock than the order asks for.
    #[error("insufficient stock for product {0}")]
    InsufficientStock(String),
    /// Adding to the product's stock would overflow it.
    #[error("stock of product {0} cannot grow by that much")]
    StockOverflow(String),
    /// The caller's profile does not exist in weft-user.
    #[error("user {0} does not exist")]
    UserMissing(String),
    /// The idempotency key was already used by this user for other items.
    #[error("idempotency key was already used for a different request")]
    KeyReused,
    /// weft-user could not be reached or did not answer in time.
    #[error("user service unavailable: {0}")]
    UserServiceUnavailable(String),
    /// weft-user refused the caller's credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A storage failure.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A storage failure on the SQLite writer thread's connection.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The SQLite writer could not run the transaction (its batch failed, or it stopped).
    #[error(transparent)]
    Write(#[from] weft_mesh::sqlite_writer::WriteError),
    /// Anything else that is the service's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        match err {
            Error::Invalid(field) => field.into(),
            Error::MixedCurrencies { .. } | Error::TotalTooLarge => {
                Status::invalid_argument(err.to_string())
            }
            Error::ProductNotFound(_) | Error::OrderNotFound(_) => {
                Status::not_found(err.to_string())
            }
            Error::InsufficientStock(_) | Error::StockOverflow(_) | Error::UserMissing(_) => {
                Status::failed_precondition(err.to_string())
            }
            Error::KeyReused => Status::already_exists(err.to_string()),
            Error::UserServiceUnavailable(reason) => {
                tracing::warn!(reason, "user service unavailable");
                Status::unavailable("user service unavailable")
            }
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::Db(_) | Error::Sqlite(_) | Error::Write(_) | Error::Internal(_) => {
                tracing::error!(error = %err, "request failed");
                Status::internal("internal error")
            }
        }
    }
}

// === products ===

/// A product in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Opaque id.
    pub id: String,
    /// Name, 1..200 characters.
    pub name: String,
    /// Description, up to 2000 characters.
    pub description: String,
    /// Price of one unit in cents.
    pub unit_price_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Units in stock, never negative.
    pub stock: i64,
    /// Creation time, microseconds since the epoch.
    pub create_time: i64,
    /// Last change, microseconds since the epoch.
    pub update_time: i64,
}

/// A validated product to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    /// Trimmed name.
    pub name: String,
    /// Trimmed description.
    pub description: String,
    /// Price of one unit in cents.
    pub unit_price_cents: i64,
    /// ISO 4217 code, `USD` when none was given.
    pub currency: String,
    /// Initial stock.
    pub stock: i64,
}

/// Validates the fields of a product to create (`product.name`, ...).
pub fn new_product(
    name: &str,
    description: &str,
    unit_price_cents: i64,
    currency: &str,
    stock: i64,
) -> Result<NewProduct, FieldError> {
    let name = validate::text("product.name", name, 1, MAX_NAME_CHARS)?;
    let description = description_text("product.description", description)?;
    let unit_price_cents = validate::range(
        "product.unit_price_cents",
        unit_price_cents,
        0,
        MAX_UNIT_PRICE_CENTS,
    )?;
    let currency = currency_code("product.currency", currency)?;
    let stock = validate::range("product.stock", stock, 0, i64::MAX)?;
    Ok(NewProduct {
        name: name.to_owned(),
        description: description.to_owned(),
        unit_price_cents,
        currency,
        stock,
    })
}

/// Validates the units of a restock.
pub fn restock_quantity(quantity: i64) -> Result<i64, FieldError> {
    validate::range("quantity", quantity, 1, MAX_STOCK_CHANGE)
}

/// A description: empty, or at most 2000 characters as sent, trimmed, not blank; line breaks and
/// tabs are allowed, other control characters are not (unlike names, descriptions are prose).
fn description_text<'a>(field: &str, value: &'a str) -> Result<&'a str, FieldError> {
    if value.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    if !value.is_empty() && value.trim().is_empty() {
        return Err(FieldError::new(
            field,
            "must be empty or more than white space",
        ));
    }
    let value = value.trim();
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value)
}

/// An ISO 4217-shaped code (three ASCII capitals), or `USD` when empty.
fn currency_code(field: &str, value: &str) -> Result<String, FieldError> {
    if value.is_empty() {
        return Ok(DEFAULT_CURRENCY.to_owned());
    }
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(value.to_owned())
    } else {
        Err(FieldError::new(
            field,
            "must be a three-letter ISO 4217 code in capitals, like USD",
        ))
    }
}

// === orders ===

/// The state of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Placed; its stock is taken.
    Confirmed,
    /// Cancelled; its stock was put back.
    Cancelled,
}

impl OrderStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the stored form.
    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "confirmed" => Some(OrderStatus::Confirmed),
            "cancelled" => Some(OrderStatus::Cancelled),
            _ => None,
        }
    }
}

/// One line of a placed order, with the name and price it was placed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderItem {
    /// The product ordered.
    pub product_id: String,
    /// The product's name when the order was placed.
    pub product_name: String,
    /// Units ordered.
    pub quantity: i64,
    /// Price of one unit in cents when the order was placed.
    pub unit_price_cents: i64,
}

/// A placed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Opaque id.
    pub id: String,
    /// The user who placed it.
    pub user_id: String,
    /// Its state.
    pub status: OrderStatus,
    /// Its lines, in request order.
    pub items: Vec<OrderItem>,
    /// Sum of quantity x unit price.
    pub total_cents: i64,
    /// Currency of every line.
    pub currency: String,
    /// The key it was placed with, if any.
    pub idempotency_key: Option<String>,
    /// Creation time, microseconds since the epoch.
    pub create_time: i64,
    /// Last change, microseconds since the epoch.
    pub update_time: i64,
}

/// One requested line: a product and a quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    /// The product to order.
    pub product_id: String,
    /// Units, 1..=1000.
    pub quantity: i64,
}

/// A validated CreateOrder request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    /// The idempotency key, if one was given.
    pub idempotency_key: Option<String>,
    /// The lines, 1..=100, in request order.
    pub lines: Vec<OrderLine>,
    /// [`request_hash`] of the lines.
    pub request_hash: String,
}

/// Validates a CreateOrder request. The line count is checked before any line is looked at,
/// so an oversized request costs nothing more than its decoding.
pub fn order_request<'a>(
    idempotency_key: &str,
    lines: impl ExactSizeIterator<Item = (&'a str, i64)>,
) -> Result<OrderRequest, FieldError> {
    let idempotency_key = match idempotency_key.chars().count() {
        0 => None,
        n if n > MAX_IDEMPOTENCY_KEY_CHARS => {
            return Err(FieldError::new(
                "idempotency_key",
                format!("must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"),
            ));
        }
        _ if idempotency_key.chars().any(char::is_control) => {
            return Err(FieldError::new(
                "idempotency_key",
                "must not contain control characters",
            ));
        }
        _ => Some(idempotency_key.to_owned()),
    };
    if !(1..=MAX_ORDER_LINES).contains(&lines.len()) {
        return Err(FieldError::new(
            "items",
            format!("must have between 1 and {MAX_ORDER_LINES} lines"),
        ));
    }
    let lines = lines
        .enumerate()
        .map(|(i, (product_id, quantity))| {
            let at = |e: FieldError| FieldError::new(format!("items[{i}].{}", e.field), e.reason);
            validate::id("product_id", product_id).map_err(at)?;
            validate::range("quantity", quantity, 1, MAX_LINE_QUANTITY).map_err(at)?;
            Ok(OrderLine {
                product_id: product_id.to_owned(),
                quantity,
            })
        })
        .collect::<Result<Vec<_>, FieldError>>()?;
    let request_hash = request_hash(&lines);
    Ok(OrderRequest {
        idempotency_key,
        lines,
        request_hash,
    })
}

/// The sha256 (hex) of the canonical form of an order's lines: each line as
/// `<byte length of id>:<id>:<quantity>\n`, in request order, after a version tag. The length
/// prefix keeps two different line lists from ever sharing a canonical form.
pub fn request_hash(lines: &[OrderLine]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"weft.order.v1/lines\n");
    for line in lines {
        hasher.update(
            format!(
                "{}:{}:{}\n",
                line.product_id.len(),
                line.product_id,
                line.quantity
            )
            .as_bytes(),
        );
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a request with a used idempotency key gets: the order placed first when the request
/// is the same, ALREADY_EXISTS when it is not.
pub fn replay(
    existing: Order,
    existing_hash: Option<&str>,
    request_hash: &str,
) -> Result<Order, Error> {
    if existing_hash == Some(request_hash) {
        Ok(existing)
    } else {
        Err(Error::KeyReused)
    }
}

// === stock and pricing ===

impl OrderRequest {
    /// The units the order takes from each product: repeated lines of one product add up, so
    /// its stock is checked against their sum at once.
    pub fn units_per_product(&self) -> BTreeMap<&str, i64> {
        units_per_product(
            self.lines
                .iter()
                .map(|line| (line.product_id.as_str(), line.quantity)),
        )
    }
}

impl Order {
    /// The units the order holds of each product: what cancelling it puts back.
    pub fn units_per_product(&self) -> BTreeMap<&str, i64> {
        units_per_product(
            self.items
                .iter()
                .map(|item| (item.product_id.as_str(), item.quantity)),
        )
    }
}

/// Sums quantities by product id. A `BTreeMap`, so products come out in id order: the store
/// changes their stock in that order, and concurrent orders then never deadlock.
fn units_per_product<'a>(lines: impl Iterator<Item = (&'a str, i64)>) -> BTreeMap<&'a str, i64> {
    let mut units = BTreeMap::new();
    for (product_id, quantity) in lines {
        *units.entry(product_id).or_default() += quantity;
    }
    units
}

/// The products an order has taken, each with the name and unit price it had then, and the
/// currency they share. It is filled one product at a time, as the store takes each one's
/// stock, so that a second currency stops the order at the product that brings it.
#[derive(Debug, Default)]
pub struct OrderPricing<'a> {
    /// Name and unit price in cents of each product taken, by id.
    taken: BTreeMap<&'a str, (String, i64)>,
    /// The currency of the first product taken.
    currency: Option<String>,
}

/// The money of a new order: its priced items, their total and their currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedOrder {
    /// One item per requested line, in request order.
    pub items: Vec<OrderItem>,
    /// Sum of quantity x unit price over the items.
    pub total_cents: i64,
    /// The products' common currency ([`DEFAULT_CURRENCY`] when no product was taken).
    pub currency: String,
}

impl<'a> OrderPricing<'a> {
    /// Records a product taken for the order, at its current name, unit price and currency;
    /// [`Error::MixedCurrencies`] when the currency differs from the first product's.
    pub fn take(
        &mut self,
        product_id: &'a str,
        name: String,
        unit_price_cents: i64,
        currency: String,
    ) -> Result<(), Error> {
        match &self.currency {
            None => self.currency = Some(currency),
            Some(first) if *first != currency => {
                return Err(Error::MixedCurrencies {
                    first: first.clone(),
                    other: currency,
                });
            }
            Some(_) => {}
        }
        self.taken.insert(product_id, (name, unit_price_cents));
        Ok(())
    }

    /// Prices each line at its product's unit price, in request order, and sums them;
    /// [`Error::TotalTooLarge`] when the total does not fit in 64 bits.
    pub fn price(self, lines: &[OrderLine]) -> Result<PricedOrder, Error> {
        let mut items = Vec::with_capacity(lines.len());
        let mut total: i64 = 0;
        for line in lines {
            let (name, price) = self
                .taken
                .get(line.product_id.as_str())
                .ok_or_else(|| Error::Internal("a line's product was not taken".into()))?;
            total = price
                .checked_mul(line.quantity)
                .and_then(|cost| total.checked_add(cost))
                .ok_or(Error::TotalTooLarge)?;
            items.push(OrderItem {
                product_id: line.product_id.clone(),
                product_name: name.clone(),
                quantity: line.quantity,
                unit_price_cents: *price,
            });
        }
        Ok(PricedOrder {
            items,
            total_cents: total,
            currency: self.currency.unwrap_or_else(|| DEFAULT_CURRENCY.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(items: &[(&'static str, i64)]) -> impl ExactSizeIterator<Item = (&'static str, i64)> {
        items.iter().copied()
    }

    /// A confirmed order "o1" of user "u1" with these items (the other fields do not matter).
    fn order_of(items: Vec<OrderItem>) -> Order {
        Order {
            id: "o1".into(),
            user_id: "u1".into(),
            status: OrderStatus::Confirmed,
            items,
            total_cents: 0,
            currency: "USD".into(),
            idempotency_key: Some("k".into()),
            create_time: 0,
            update_time: 0,
        }
    }

    #[test]
    fn a_valid_order_request_keeps_its_lines_in_order() {
        let request = order_request("key-1", lines(&[("b", 2), ("a", 1), ("b", 3)])).unwrap();
        assert_eq!(request.idempotency_key.as_deref(), Some("key-1"));
        let ids: Vec<_> = request
            .lines
            .iter()
            .map(|l| l.product_id.as_str())
            .collect();
        assert_eq!(ids, ["b", "a", "b"]);
        assert_eq!(request.request_hash.len(), 64);
    }

    #[test]
    fn an_empty_key_means_no_key_and_a_long_one_is_refused() {
        assert_eq!(
            order_request("", lines(&[("a", 1)]))
                .unwrap()
                .idempotency_key,
            None
        );
        let key = "é".repeat(128);
        assert!(order_request(&key, lines(&[("a", 1)])).is_ok());
        let err = order_request(&"k".repeat(129), lines(&[("a", 1)])).unwrap_err();
        assert_eq!(err.field, "idempotency_key");
    }

    #[test]
    fn line_counts_outside_1_to_100_are_refused() {
        let err = order_request("", lines(&[])).unwrap_err();
        assert_eq!(err.to_string(), "items: must have between 1 and 100 lines");
        let many: Vec<(&str, i64)> = vec![("a", 1); 10_000];
        assert_eq!(
            order_request("", many.into_iter()).unwrap_err().field,
            "items"
        );
        let hundred: Vec<(&str, i64)> = vec![("a", 1); 100];
        assert!(order_request("", hundred.into_iter()).is_ok());
    }

    #[test]
    fn a_bad_line_is_named_by_its_index() {
        let err =
            order_request("", lines(&[("a", 1), ("b", 1), ("c", 1), ("d", 1001)])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "items[3].quantity: must be between 1 and 1000"
        );
        let err = order_request("", lines(&[("a", 0)])).unwrap_err();
        assert_eq!(err.field, "items[0].quantity");
        let err = order_request("", lines(&[("a", 1), ("", 1)])).unwrap_err();
        assert_eq!(err.field, "items[1].product_id");
    }

    #[test]
    fn the_hash_depends_on_every_line_and_nothing_else() {
        let hash =
            |items: &[(&'static str, i64)]| order_request("", lines(items)).unwrap().request_hash;
        assert_eq!(hash(&[("a", 1), ("b", 2)]), hash(&[("a", 1), ("b", 2)]));
        assert_ne!(hash(&[("a", 1), ("b", 2)]), hash(&[("a", 1), ("b", 3)]));
        assert_ne!(hash(&[("a", 1), ("b", 2)]), hash(&[("b", 2), ("a", 1)]));
        assert_ne!(hash(&[("a", 1)]), hash(&[("a", 1), ("a", 1)]));
        // Ids that could run into quantities do not collide thanks to the length prefix.
        assert_ne!(hash(&[("a:1", 2)]), hash(&[("a", 12)]));
        let with_key = order_request("k", lines(&[("a", 1)])).unwrap().request_hash;
        assert_eq!(with_key, hash(&[("a", 1)]));
    }

    #[test]
    fn products_are_validated_field_by_field() {
        let ok = new_product("  Tea  ", "Green\nloose leaf", 450, "", 10).unwrap();
        assert_eq!((ok.name.as_str(), ok.currency.as_str()), ("Tea", "USD"));
        assert_eq!(ok.description, "Green\nloose leaf");

        let field = |r: Result<NewProduct, FieldError>| r.unwrap_err().field;
        assert_eq!(field(new_product("", "", 1, "USD", 1)), "product.name");
        assert_eq!(
            field(new_product(&"n".repeat(201), "", 1, "USD", 1)),
            "product.name"
        );
        assert_eq!(
            field(new_product("n", &"d".repeat(2001), 1, "USD", 1)),
            "product.description"
        );
        assert_eq!(
            field(new_product("n", "a\u{7}b", 1, "USD", 1)),
            "product.description"
        );
        assert_eq!(
            field(new_product("n", "", -1, "USD", 1)),
            "product.unit_price_cents"
        );
        assert_eq!(
            field(new_product("n", "", MAX_UNIT_PRICE_CENTS + 1, "USD", 1)),
            "product.unit_price_cents"
        );
        for bad in ["usd", "US", "USDX", "U$D", "ÉUR"] {
            assert_eq!(
                field(new_product("n", "", 1, bad, 1)),
                "product.currency",
                "{bad}"
            );
        }
        assert_eq!(field(new_product("n", "", 1, "EUR", -1)), "product.stock");
        assert!(new_product("n", "", 0, "EUR", i64::MAX).is_ok());
        // A description is empty or says something; its length counts what was sent.
        assert_eq!(
            field(new_product("n", " \n ", 1, "EUR", 1)),
            "product.description"
        );
        assert!(new_product("n", " Fine.\n", 1, "EUR", 1).is_ok());
        let long = format!("{} ", "d".repeat(MAX_DESCRIPTION_CHARS));
        assert_eq!(
            field(new_product("n", &long, 1, "EUR", 1)),
            "product.description"
        );
    }

    #[test]
    fn restock_quantities_are_bounded() {
        assert!(restock_quantity(0).is_err());
        assert!(restock_quantity(1_000_000_001).is_err());
        assert_eq!(restock_quantity(1_000_000_000).unwrap(), 1_000_000_000);
    }

    #[test]
    fn errors_map_to_the_contract_codes() {
        use tonic::Code;
        let status = |e: Error| Status::from(e);
        let s = status(Error::ProductNotFound("p1".into()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "product p1 not found")
        );
        let s = status(Error::InsufficientStock("p1".into()));
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::FailedPrecondition,
                "insufficient stock for product p1"
            )
        );
        let s = status(Error::UserMissing("u1".into()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::FailedPrecondition, "user u1 does not exist")
        );
        let s = status(Error::KeyReused);
        assert_eq!(s.code(), Code::AlreadyExists);
        assert_eq!(
            s.message(),
            "idempotency key was already used for a different request"
        );
        let s = status(Error::MixedCurrencies {
            first: "USD".into(),
            other: "EUR".into(),
        });
        assert_eq!(s.code(), Code::InvalidArgument);
        let s = status(Error::UserServiceUnavailable("connection refused".into()));
        assert_eq!(s.code(), Code::Unavailable);
        let s = status(Error::Db(sqlx::Error::RowNotFound));
        assert_eq!((s.code(), s.message()), (Code::Internal, "internal error"));
    }

    #[test]
    fn a_replay_needs_the_same_hash() {
        let order = order_of(Vec::new());
        assert_eq!(replay(order.clone(), Some("h"), "h").unwrap().id, "o1");
        assert!(matches!(
            replay(order.clone(), Some("h"), "x"),
            Err(Error::KeyReused)
        ));
        assert!(matches!(replay(order, None, "h"), Err(Error::KeyReused)));
    }

    #[test]
    fn units_add_up_per_product_in_id_order() {
        let request = order_request("", lines(&[("b", 2), ("a", 1), ("b", 3)])).unwrap();
        let units: Vec<_> = request.units_per_product().into_iter().collect();
        assert_eq!(units, [("a", 1), ("b", 5)]);

        let order = order_of(
            request
                .lines
                .iter()
                .map(|line| OrderItem {
                    product_id: line.product_id.clone(),
                    product_name: String::new(),
                    quantity: line.quantity,
                    unit_price_cents: 0,
                })
                .collect(),
        );
        assert_eq!(order.units_per_product(), request.units_per_product());
    }

    #[test]
    fn lines_are_priced_in_request_order_at_the_taken_prices() {
        let request = order_request("", lines(&[("b", 2), ("a", 1), ("b", 3)])).unwrap();
        let mut pricing = OrderPricing::default();
        pricing.take("a", "Tea".into(), 450, "EUR".into()).unwrap();
        pricing.take("b", "Mug".into(), 1200, "EUR".into()).unwrap();
        let priced = pricing.price(&request.lines).unwrap();
        let items: Vec<_> = priced
            .items
            .iter()
            .map(|i| (i.product_name.as_str(), i.quantity, i.unit_price_cents))
            .collect();
        assert_eq!(items, [("Mug", 2, 1200), ("Tea", 1, 450), ("Mug", 3, 1200)]);
        assert_eq!(priced.total_cents, 5 * 1200 + 450);
        assert_eq!(priced.currency, "EUR");
    }

    #[test]
    fn a_second_currency_is_refused_where_it_appears() {
        let mut pricing = OrderPricing::default();
        pricing.take("a", "A".into(), 1, "USD".into()).unwrap();
        pricing.take("b", "B".into(), 1, "USD".into()).unwrap();
        let err = pricing.take("c", "C".into(), 1, "EUR".into()).unwrap_err();
        assert!(
            matches!(&err, Error::MixedCurrencies { first, other } if first == "USD" && other == "EUR"),
            "{err:?}"
        );
    }

    #[test]
    fn a_total_past_64_bits_is_refused() {
        let at_max = order_request("", lines(&[("a", 1)])).unwrap();
        let twice = order_request("", lines(&[("a", 1), ("a", 1)])).unwrap();
        let pricing = || {
            let mut pricing = OrderPricing::default();
            pricing
                .take("a", "A".into(), i64::MAX, "USD".into())
                .unwrap();
            pricing
        };
        assert_eq!(
            pricing().price(&at_max.lines).unwrap().total_cents,
            i64::MAX
        );
        assert!(matches!(
            pricing().price(&twice.lines),
            Err(Error::TotalTooLarge)
        ));
        let dear = order_request("", lines(&[("a", 2)])).unwrap();
        assert!(matches!(
            pricing().price(&dear.lines),
            Err(Error::TotalTooLarge)
        ));
    }

    #[test]
    fn pricing_without_products_is_in_the_default_currency_and_a_missing_one_is_a_bug() {
        let priced = OrderPricing::default().price(&[]).unwrap();
        assert_eq!(
            (
                priced.items.len(),
                priced.total_cents,
                priced.currency.as_str()
            ),
            (0, 0, DEFAULT_CURRENCY)
        );
        let request = order_request("", lines(&[("a", 1)])).unwrap();
        assert!(matches!(
            OrderPricing::default().price(&request.lines),
            Err(Error::Internal(_))
        ));
    }
}
