//! Who may do what: each decision is a small pure function of the caller and what it acts on,
//! so the rules read in one place and are tested without a server.

use super::{Caller, NO_USER, Role};

/// How a request identified itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// No `Authorization` header.
    Nothing,
    /// A token of a known user, whose caller this is.
    Known(Caller),
    /// A header or token that names no user (malformed, unknown, revoked).
    Unknown,
}

/// Why a request was refused before any handler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Protected mode (no user exists) and the client is not on loopback: 403.
    Protected,
    /// Users exist and the request has no valid token: 401.
    Unauthenticated {
        /// Whether it sent a token at all (the message differs).
        sent_token: bool,
    },
}

/// Finds the caller of a request. While no user exists (`protected`), loopback clients act as
/// the local admin and others are refused, unless `anonymous` gives tokenless requests a role.
/// Once users exist, a known token is its user, no token is `anonymous` (when set), and
/// anything else is refused.
pub fn identify(
    protected: bool,
    loopback: bool,
    presented: Presented,
    anonymous: Option<Role>,
) -> Result<Caller, Refusal> {
    let anonymous = anonymous.map(Caller::anonymous);
    if protected {
        if loopback {
            return Ok(Caller::local_admin());
        }
        return match (presented, anonymous) {
            (Presented::Nothing, Some(anonymous)) => Ok(anonymous),
            _ => Err(Refusal::Protected),
        };
    }
    match (presented, anonymous) {
        (Presented::Known(caller), _) => Ok(caller),
        (Presented::Nothing, Some(anonymous)) => Ok(anonymous),
        (Presented::Nothing, None) => Err(Refusal::Unauthenticated { sent_token: false }),
        (Presented::Unknown, _) => Err(Refusal::Unauthenticated { sent_token: true }),
    }
}

/// Whether `caller` is the user `owner` (a real user: no-user owners belong to nobody but
/// callers without a user, such as anonymous ones).
fn owns(caller: &Caller, owner: u32) -> bool {
    caller.user == owner
}

/// Whether `caller` may register a function, or a new version of one owned by `owner`
/// (`None`: no function of that name exists).
pub fn may_register(caller: &Caller, owner: Option<u32>) -> bool {
    match caller.role {
        Role::Admin => true,
        Role::Developer => owner.is_none_or(|owner| owns(caller, owner)),
        Role::Invoker => false,
    }
}

/// Whether `caller` may upload code bundles (`PUT`/`HEAD /v1/blobs/...`): whoever may
/// register functions, admins and developers.
pub fn may_upload_code(caller: &Caller) -> bool {
    matches!(caller.role, Role::Admin | Role::Developer)
}

/// Whether `caller` may delete a function owned by `owner`.
pub fn may_delete(caller: &Caller, owner: u32) -> bool {
    match caller.role {
        Role::Admin => true,
        Role::Developer => owns(caller, owner),
        Role::Invoker => false,
    }
}

/// Whether `caller` may download the code of a function owned by `owner` (admins and the
/// owner: a grant to call a function does not show its code).
pub fn may_read_code(caller: &Caller, owner: u32) -> bool {
    match caller.role {
        Role::Admin => true,
        Role::Developer => owns(caller, owner),
        Role::Invoker => false,
    }
}

/// Whether `caller` may invoke (and see) a function owned by `owner`; `granted` is whether
/// the caller holds a grant on it.
pub fn may_invoke(caller: &Caller, owner: u32, granted: bool) -> bool {
    match caller.role {
        Role::Admin => true,
        Role::Developer => owns(caller, owner) || granted,
        Role::Invoker => granted,
    }
}

/// Whether `caller` may read a task (status, result, logs) made by `task_caller` of a function
/// owned by `function_owner` (`None`: the function is gone).
pub fn may_read_task(caller: &Caller, task_caller: u32, function_owner: Option<u32>) -> bool {
    caller.is_admin()
        || task_caller == caller.user
        || function_owner.is_some_and(|owner| may_read_all_tasks(caller, owner))
}

/// Whether `caller` may read every task of a function owned by `owner`, whoever made it
/// (admins and the owning developer), and so see its queue's levels.
pub fn may_read_all_tasks(caller: &Caller, owner: u32) -> bool {
    caller.is_admin() || (caller.role == Role::Developer && owner == caller.user)
}

/// Whether `caller` may cancel a task made by `task_caller` of a function owned by
/// `function_owner` (`None`: the function is gone); `granted` is whether the caller holds a
/// grant on it. Admins and the function's owner cancel anyone's task; others their own, while
/// they may still invoke the function.
pub fn may_cancel_task(
    caller: &Caller,
    task_caller: u32,
    function_owner: Option<u32>,
    granted: bool,
) -> bool {
    match function_owner {
        _ if caller.is_admin() => true,
        Some(owner) if may_read_all_tasks(caller, owner) => true,
        Some(owner) => task_caller == caller.user && may_invoke(caller, owner, granted),
        None => false,
    }
}

/// Whose queued tasks of a function owned by `owner` `caller` may cancel at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelScope {
    /// Everyone's (admins, the function's owner).
    All,
    /// The caller's own (whoever may invoke it).
    Own,
    /// None: the caller may not invoke the function.
    Nothing,
}

/// Whose queued tasks of a function owned by `owner` `caller` may cancel; `granted` is whether
/// the caller holds a grant on it.
pub fn cancel_scope(caller: &Caller, owner: u32, granted: bool) -> CancelScope {
    if may_read_all_tasks(caller, owner) {
        CancelScope::All
    } else if may_invoke(caller, owner, granted) {
        CancelScope::Own
    } else {
        CancelScope::Nothing
    }
}

/// Whether `caller` may add, list, remove users and issue their tokens.
pub fn may_manage_users(caller: &Caller) -> bool {
    caller.is_admin()
}

/// Whether `caller` may read the user named `name`.
pub fn may_read_user(caller: &Caller, name: &str) -> bool {
    caller.is_admin() || (caller.user != NO_USER && caller.name == name)
}

/// Whether `caller` may grant or revoke the right to invoke a function owned by `owner`.
pub fn may_grant(caller: &Caller, owner: u32) -> bool {
    caller.is_admin()
        || (caller.role == Role::Developer && caller.user != NO_USER && owns(caller, owner))
}

/// Whether `caller` may list the workers.
pub fn may_list_workers(caller: &Caller) -> bool {
    matches!(caller.role, Role::Admin | Role::Developer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u32, role: Role) -> Caller {
        Caller {
            user: id,
            name: format!("u{id}"),
            role,
        }
    }

    #[test]
    fn only_admins_and_the_owner_read_a_functions_code() {
        assert!(may_read_code(&user(1, Role::Admin), 3));
        assert!(may_read_code(&user(3, Role::Developer), 3));
        assert!(!may_read_code(&user(4, Role::Developer), 3));
        // An invoker, even one with a grant, calls the function but does not see its code.
        assert!(!may_read_code(&user(3, Role::Invoker), 3));
    }

    #[test]
    fn protected_mode_answers_loopback_as_admin_and_refuses_others() {
        for presented in [Presented::Nothing, Presented::Unknown] {
            assert_eq!(
                identify(true, true, presented.clone(), None),
                Ok(Caller::local_admin())
            );
            assert_eq!(
                identify(true, false, presented, None),
                Err(Refusal::Protected)
            );
        }
    }

    #[test]
    fn protected_mode_gives_remote_tokenless_requests_the_anonymous_role_when_set() {
        let caller = identify(true, false, Presented::Nothing, Some(Role::Invoker));
        assert_eq!(caller, Ok(Caller::anonymous(Role::Invoker)));
        let bad_token = identify(true, false, Presented::Unknown, Some(Role::Invoker));
        assert_eq!(bad_token, Err(Refusal::Protected));
    }

    #[test]
    fn with_users_a_request_needs_a_known_token_or_the_anonymous_role() {
        let dev = user(3, Role::Developer);
        for loopback in [true, false] {
            let known = identify(false, loopback, Presented::Known(dev.clone()), None);
            assert_eq!(known, Ok(dev.clone()));
            let none = identify(false, loopback, Presented::Nothing, None);
            assert_eq!(none, Err(Refusal::Unauthenticated { sent_token: false }));
            let unknown = identify(false, loopback, Presented::Unknown, Some(Role::Admin));
            assert_eq!(unknown, Err(Refusal::Unauthenticated { sent_token: true }));
            let anonymous = identify(false, loopback, Presented::Nothing, Some(Role::Developer));
            assert_eq!(anonymous, Ok(Caller::anonymous(Role::Developer)));
        }
    }

    #[test]
    fn developers_change_only_the_functions_they_own() {
        let dev = user(3, Role::Developer);
        assert!(may_register(&dev, None));
        assert!(may_register(&dev, Some(3)));
        assert!(!may_register(&dev, Some(4)));
        assert!(!may_register(&dev, Some(NO_USER)));
        assert!(may_delete(&dev, 3) && !may_delete(&dev, 4));
        let admin = user(1, Role::Admin);
        assert!(may_register(&admin, Some(4)) && may_delete(&admin, 4));
        let invoker = user(5, Role::Invoker);
        assert!(!may_register(&invoker, None) && !may_delete(&invoker, 5));
    }

    #[test]
    fn invoking_needs_ownership_or_a_grant() {
        let dev = user(3, Role::Developer);
        assert!(may_invoke(&dev, 3, false));
        assert!(!may_invoke(&dev, 4, false));
        assert!(may_invoke(&dev, 4, true));
        let invoker = user(5, Role::Invoker);
        assert!(!may_invoke(&invoker, 5, false));
        assert!(may_invoke(&invoker, 4, true));
        assert!(may_invoke(&user(1, Role::Admin), 4, false));
    }

    #[test]
    fn a_task_is_read_by_its_caller_the_functions_owner_and_admins() {
        let dev = user(3, Role::Developer);
        let invoker = user(5, Role::Invoker);
        assert!(may_read_task(&invoker, 5, Some(3)));
        assert!(may_read_task(&dev, 5, Some(3)));
        assert!(!may_read_task(&dev, 5, Some(4)));
        assert!(!may_read_task(&dev, 5, None));
        assert!(!may_read_task(&invoker, 6, Some(5)));
        assert!(may_read_task(&user(1, Role::Admin), 5, None));
    }

    #[test]
    fn a_task_is_cancelled_by_admins_the_owner_and_its_caller_while_it_may_invoke() {
        let dev = user(3, Role::Developer);
        let invoker = user(5, Role::Invoker);
        // Its own task, with a grant; without one (revoked) it may no longer cancel it.
        assert!(may_cancel_task(&invoker, 5, Some(3), true));
        assert!(!may_cancel_task(&invoker, 5, Some(3), false));
        // Another user's task: only the owner and admins.
        assert!(!may_cancel_task(&invoker, 6, Some(3), true));
        assert!(may_cancel_task(&dev, 6, Some(3), false));
        assert!(!may_cancel_task(&dev, 6, Some(4), true));
        assert!(may_cancel_task(&user(1, Role::Admin), 6, None, false));
        assert!(!may_cancel_task(&dev, 3, None, false));
    }

    #[test]
    fn a_functions_queue_is_cancelled_whole_by_admins_and_its_owner_and_in_part_by_invokers() {
        assert_eq!(
            cancel_scope(&user(1, Role::Admin), 3, false),
            CancelScope::All
        );
        let dev = user(3, Role::Developer);
        assert_eq!(cancel_scope(&dev, 3, false), CancelScope::All);
        assert_eq!(cancel_scope(&dev, 4, true), CancelScope::Own);
        assert_eq!(cancel_scope(&dev, 4, false), CancelScope::Nothing);
        let invoker = user(5, Role::Invoker);
        assert_eq!(cancel_scope(&invoker, 3, true), CancelScope::Own);
        assert_eq!(cancel_scope(&invoker, 3, false), CancelScope::Nothing);
    }

    #[test]
    fn users_are_managed_by_admins_and_read_by_themselves() {
        let dev = user(3, Role::Developer);
        assert!(!may_manage_users(&dev) && may_manage_users(&user(1, Role::Admin)));
        assert!(may_read_user(&dev, "u3") && !may_read_user(&dev, "u4"));
        let anonymous = Caller::anonymous(Role::Developer);
        assert!(!may_read_user(&anonymous, "anonymous"));
    }

    #[test]
    fn grants_are_given_by_admins_and_the_functions_owner() {
        let dev = user(3, Role::Developer);
        assert!(may_grant(&dev, 3) && !may_grant(&dev, 4));
        assert!(may_grant(&user(1, Role::Admin), 4));
        assert!(!may_grant(&user(3, Role::Invoker), 3));
        assert!(!may_grant(&Caller::anonymous(Role::Developer), NO_USER));
    }

    #[test]
    fn workers_are_listed_for_admins_and_developers() {
        assert!(may_list_workers(&user(1, Role::Admin)));
        assert!(may_list_workers(&user(3, Role::Developer)));
        assert!(!may_list_workers(&user(5, Role::Invoker)));
    }
}
