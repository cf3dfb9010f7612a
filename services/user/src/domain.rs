//! The rules of user profiles: what a valid profile is, who may change what, and the crate's
//! error type with its single mapping to a gRPC status.

use prost_types::FieldMask;
use tonic::Status;
use weft_mesh::validate::{self, FieldError};
use weft_proto::user::{CreateUserRequest, Role, User};

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 200;
/// Longest `creation_key`, in characters.
pub const MAX_CREATION_KEY: usize = 128;

/// Everything that can go wrong in the user service.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No such user, or one the caller may not see (the two are indistinguishable on purpose).
    #[error("user not found")]
    NotFound,
    /// The email belongs to another profile.
    #[error("email already registered")]
    EmailTaken,
    /// The caller may see the profile but not make this change.
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// The database failed.
    #[error("database error: {0}")]
    Store(#[from] sqlx::Error),
    /// A stored row breaks the schema's promises.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<UserError> for Status {
    fn from(err: UserError) -> Status {
        match err {
            UserError::Invalid(field) => field.into(),
            UserError::NotFound => Status::not_found("user not found"),
            UserError::EmailTaken => Status::already_exists("email already registered"),
            UserError::PermissionDenied(message) => Status::permission_denied(message),
            UserError::Store(_) | UserError::Corrupt(_) => {
                tracing::error!(error = %err, "user service internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// A user's role as stored in the `role` column.
pub fn role_to_db(role: Role) -> Option<&'static str> {
    match role {
        Role::User => Some("user"),
        Role::Admin => Some("admin"),
        Role::Unspecified => None,
    }
}

/// The role of a `role` column value.
pub fn role_from_db(value: &str) -> Option<Role> {
    match value {
        "user" => Some(Role::User),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

/// A profile as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Opaque id.
    pub id: String,
    /// Lower-cased email.
    pub email: String,
    /// Name shown to others.
    pub display_name: String,
    /// ROLE_USER or ROLE_ADMIN.
    pub role: Role,
    /// Microseconds since the epoch.
    pub create_time: i64,
    /// Microseconds since the epoch.
    pub update_time: i64,
}

impl From<UserRecord> for User {
    fn from(r: UserRecord) -> User {
        User {
            id: r.id,
            email: r.email,
            display_name: r.display_name,
            role: r.role as i32,
            create_time: Some(weft_mesh::clock::timestamp(r.create_time)),
            update_time: Some(weft_mesh::clock::timestamp(r.update_time)),
        }
    }
}

/// A validated CreateUser request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Trimmed, lower-cased email.
    pub email: String,
    /// Trimmed display name.
    pub display_name: String,
    /// ROLE_USER or ROLE_ADMIN.
    pub role: Role,
    /// The caller's retry key, as sent.
    pub creation_key: String,
}

/// Validates a CreateUser request.
pub fn new_user(req: &CreateUserRequest) -> Result<NewUser, FieldError> {
    let email = validate::email("email", &req.email)?;
    let display_name = display_name("display_name", &req.display_name)?;
    let role = role("role", req.role)?;
    let creation_key = creation_key(&req.creation_key)?;
    Ok(NewUser {
        email,
        display_name,
        role,
        creation_key,
    })
}

/// A display name of 1..=200 characters, trimmed.
pub fn display_name(field: &str, value: &str) -> Result<String, FieldError> {
    validate::text(field, value, 1, MAX_DISPLAY_NAME).map(str::to_string)
}

/// A role that may be stored: ROLE_USER or ROLE_ADMIN.
pub fn role(field: &str, value: i32) -> Result<Role, FieldError> {
    match Role::try_from(value) {
        Ok(role @ (Role::User | Role::Admin)) => Ok(role),
        _ => Err(FieldError::new(field, "must be ROLE_USER or ROLE_ADMIN")),
    }
}

/// The retry key, kept exactly as sent (trimming would merge distinct keys).
fn creation_key(value: &str) -> Result<String, FieldError> {
    let len = value.chars().count();
    if len == 0 || len > MAX_CREATION_KEY {
        return Err(FieldError::new(
            "creation_key",
            format!("must be between 1 and {MAX_CREATION_KEY} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            "creation_key",
            "must not contain control characters",
        ));
    }
    Ok(value.to_string())
}

/// A writable field of a profile, as named in an update mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writable {
    DisplayName,
    Role,
}

fn writable(path: &str) -> Result<Writable, FieldError> {
    match path {
        "display_name" | "displayName" => Ok(Writable::DisplayName),
        "role" => Ok(Writable::Role),
        other => Err(FieldError::new(
            "update_mask",
            format!("{other:?} is not a writable field (writable: display_name, role)"),
        )),
    }
}

const ROLE_CHANGE_DENIED: &str = "only administrators may change roles";

/// The changes an UpdateUser asks for, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// New display name, trimmed.
    pub display_name: Option<String>,
    /// New role.
    pub role: Option<Role>,
}

impl Changes {
    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        self.display_name.is_none() && self.role.is_none()
    }
}

/// Works out what an UpdateUser changes: the mask's fields, or with an empty mask every
/// writable field set in `user`. Unknown paths are INVALID_ARGUMENT; touching `role` without
/// being an admin is PERMISSION_DENIED; values are then validated.
pub fn changes(
    user: &User,
    mask: Option<&FieldMask>,
    is_admin: bool,
) -> Result<Changes, UserError> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    let (name, role_wanted) = if paths.is_empty() {
        (
            !user.display_name.is_empty(),
            user.role != Role::Unspecified as i32,
        )
    } else {
        let mut name = false;
        let mut role_wanted = false;
        for path in paths {
            match writable(path)? {
                Writable::DisplayName => name = true,
                Writable::Role => role_wanted = true,
            }
        }
        (name, role_wanted)
    };
    if role_wanted && !is_admin {
        return Err(UserError::PermissionDenied(ROLE_CHANGE_DENIED));
    }
    let display_name = name
        .then(|| display_name("user.display_name", &user.display_name))
        .transpose()?;
    let role = role_wanted
        .then(|| role("user.role", user.role))
        .transpose()?;
    Ok(Changes { display_name, role })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(paths: &[&str]) -> Option<FieldMask> {
        Some(FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        })
    }

    fn user(name: &str, role: Role) -> User {
        User {
            id: "u1".into(),
            display_name: name.into(),
            role: role as i32,
            ..User::default()
        }
    }

    fn message(err: UserError) -> String {
        Status::from(err).message().to_string()
    }

    #[test]
    fn mask_selects_fields() {
        let u = user(" Ada ", Role::Admin);
        let c = changes(&u, mask(&["display_name"]).as_ref(), true).unwrap();
        assert_eq!(
            c,
            Changes {
                display_name: Some("Ada".into()),
                role: None
            }
        );
        let c = changes(&u, mask(&["displayName", "role"]).as_ref(), true).unwrap();
        assert_eq!(
            c,
            Changes {
                display_name: Some("Ada".into()),
                role: Some(Role::Admin)
            }
        );
        let c = changes(&u, mask(&["role"]).as_ref(), true).unwrap();
        assert_eq!(
            c,
            Changes {
                display_name: None,
                role: Some(Role::Admin)
            }
        );
    }

    #[test]
    fn unknown_paths_are_named() {
        let u = user("Ada", Role::User);
        for path in ["email", "id", "create_time", "", "display_name.x", "*"] {
            let err = changes(&u, mask(&["display_name", path]).as_ref(), true).unwrap_err();
            let status = Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{path:?}");
            assert!(
                status.message().starts_with("update_mask: "),
                "{}",
                status.message()
            );
            assert!(
                status.message().contains(&format!("{path:?}")),
                "{}",
                status.message()
            );
        }
    }

    #[test]
    fn only_admins_touch_roles() {
        let u = user("Ada", Role::Admin);
        let err = changes(&u, mask(&["role"]).as_ref(), false).unwrap_err();
        assert!(matches!(err, UserError::PermissionDenied(_)));
        assert_eq!(message(err), "only administrators may change roles");
        // Even a role left unspecified, when the mask names it.
        let err = changes(
            &user("Ada", Role::Unspecified),
            mask(&["role"]).as_ref(),
            false,
        );
        assert!(matches!(err, Err(UserError::PermissionDenied(_))));
        // An empty mask with a role set is a role change too.
        let err = changes(&u, None, false).unwrap_err();
        assert!(matches!(err, UserError::PermissionDenied(_)));
    }

    #[test]
    fn empty_mask_takes_the_set_fields() {
        let c = changes(&user("Ada", Role::Unspecified), None, false).unwrap();
        assert_eq!(
            c,
            Changes {
                display_name: Some("Ada".into()),
                role: None
            }
        );
        let c = changes(&user("", Role::Admin), mask(&[]).as_ref(), true).unwrap();
        assert_eq!(
            c,
            Changes {
                display_name: None,
                role: Some(Role::Admin)
            }
        );
        let c = changes(&user("Ada", Role::User), None, true).unwrap();
        assert_eq!(
            c,
            Changes {
                display_name: Some("Ada".into()),
                role: Some(Role::User)
            }
        );
        assert!(
            changes(&user("", Role::Unspecified), None, false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn values_are_validated() {
        let err = changes(
            &user("", Role::User),
            mask(&["display_name"]).as_ref(),
            true,
        );
        assert_eq!(
            message(err.unwrap_err()),
            "user.display_name: must be between 1 and 200 characters"
        );
        let long = "é".repeat(201);
        assert!(changes(&user(&long, Role::User), None, true).is_err());
        assert!(changes(&user(&"é".repeat(200), Role::User), None, true).is_ok());
        assert!(changes(&user("   ", Role::Unspecified), None, false).is_err());
        let err = changes(
            &user("Ada", Role::Unspecified),
            mask(&["role"]).as_ref(),
            true,
        );
        assert_eq!(
            message(err.unwrap_err()),
            "user.role: must be ROLE_USER or ROLE_ADMIN"
        );
        let mut odd = user("Ada", Role::User);
        odd.role = 7;
        assert!(matches!(
            changes(&odd, None, true),
            Err(UserError::Invalid(_))
        ));
    }

    fn create(email: &str, name: &str, role: Role, key: &str) -> CreateUserRequest {
        CreateUserRequest {
            email: email.into(),
            display_name: name.into(),
            role: role as i32,
            creation_key: key.into(),
        }
    }

    #[test]
    fn new_users_are_validated_and_normalised() {
        let n = new_user(&create(" Ada@Example.com ", " Ada ", Role::User, "k1")).unwrap();
        assert_eq!(n.email, "ada@example.com");
        assert_eq!(n.display_name, "Ada");
        assert_eq!((n.role, n.creation_key.as_str()), (Role::User, "k1"));

        let field = |req: CreateUserRequest| new_user(&req).unwrap_err().field;
        assert_eq!(field(create("nope", "Ada", Role::User, "k")), "email");
        assert_eq!(field(create("a@x.io", "", Role::User, "k")), "display_name");
        assert_eq!(
            field(create("a@x.io", &"x".repeat(201), Role::User, "k")),
            "display_name"
        );
        assert_eq!(
            field(create("a@x.io", "Ada", Role::Unspecified, "k")),
            "role"
        );
        assert_eq!(
            field(create("a@x.io", "Ada", Role::User, "")),
            "creation_key"
        );
        assert_eq!(
            field(create("a@x.io", "Ada", Role::User, &"k".repeat(129))),
            "creation_key"
        );
        assert!(new_user(&create("a@x.io", "Ada", Role::Admin, &"k".repeat(128))).is_ok());
        let mut bad_role = create("a@x.io", "Ada", Role::User, "k");
        bad_role.role = -1;
        assert_eq!(new_user(&bad_role).unwrap_err().field, "role");
    }

    #[test]
    fn roles_round_trip_through_the_column() {
        for r in [Role::User, Role::Admin] {
            assert_eq!(role_to_db(r).and_then(role_from_db), Some(r));
        }
        assert_eq!(role_to_db(Role::Unspecified), None);
        assert_eq!(role_from_db("service"), None);
    }

    #[test]
    fn internal_errors_say_nothing() {
        let status = Status::from(UserError::Corrupt("role \"x\" in row 1".into()));
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::Internal, "internal error")
        );
        let status = Status::from(UserError::EmailTaken);
        assert_eq!(status.code(), tonic::Code::AlreadyExists);
        assert_eq!(status.message(), "email already registered");
    }
}
