//! The `scope` parameter: parsing it into resources and permissions, and the consent checks that
//! decide what a token carries.

use super::*;

pub(super) fn parse_form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// A parsed `scope` parameter.
pub(super) struct ScopeRequest {
    /// Resources in request order, each with its permission names (`.default` kept as is).
    pub(super) resources: Vec<(String, Vec<String>)>,
    pub(super) offline_access: bool,
    pub(super) openid: bool,
}

pub(super) fn parse_scope(state: &StandInState, scope: &str) -> Result<ScopeRequest, AadError> {
    let mut resources: Vec<(String, Vec<String>)> = Vec::new();
    let mut offline_access = false;
    let mut openid = false;
    for item in scope.split_whitespace() {
        if OIDC_SCOPES.contains(&item) {
            offline_access |= item == "offline_access";
            openid |= item == "openid";
            continue;
        }
        let (resource, permission) = match item.rfind('/') {
            Some(i) if item.contains("://") => (item[..i].to_owned(), item[i + 1..].to_owned()),
            Some(_) => {
                return Err(AadError::bad(
                    "invalid_scope",
                    70011,
                    format!(
                        "The provided value for the input parameter 'scope' is not valid. The scope '{item}' is not valid."
                    ),
                ));
            }
            None => (GRAPH_RESOURCES[0].to_owned(), item.to_owned()),
        };
        let kind = resource_kind(state, &resource).ok_or_else(|| {
            AadError::bad(
                "invalid_resource",
                500011,
                format!("The resource principal named {resource} was not found in the tenant. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."),
            )
        })?;
        if permission != ".default" && !kind.contains(&permission.as_str()) {
            return Err(AadError::bad(
                "invalid_scope",
                70011,
                format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope '{item}' does not exist."
                ),
            ));
        }
        match resources.iter_mut().find(|(r, _)| *r == resource) {
            Some((_, perms)) => perms.push(permission),
            None => resources.push((resource, vec![permission])),
        }
    }
    if resources.is_empty() {
        return Err(AadError::bad(
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope '{scope}' does not include a resource."
            ),
        ));
    }
    Ok(ScopeRequest {
        resources,
        offline_access,
        openid,
    })
}

/// Which permission list applies to `resource`: built-in ones, or resources some app is
/// consented for (loopback Graph stand-ins) — Outlook-like if any consented permission is.
pub(super) fn resource_kind(
    state: &StandInState,
    resource: &str,
) -> Option<&'static [&'static str]> {
    if GRAPH_RESOURCES.contains(&resource) {
        return Some(GRAPH_PERMISSIONS);
    }
    if OUTLOOK_RESOURCES.contains(&resource) {
        return Some(OUTLOOK_PERMISSIONS);
    }
    let prefix = format!("{resource}/");
    let mut known = false;
    let mut outlook = false;
    for tenant in state.tenants.values() {
        for app in tenant.apps.values() {
            for s in &app.consented_scopes {
                if let Some(p) = s.strip_prefix(&prefix) {
                    known = true;
                    outlook |= OUTLOOK_PERMISSIONS.contains(&p);
                }
            }
        }
    }
    known.then_some(if outlook {
        OUTLOOK_PERMISSIONS
    } else {
        GRAPH_PERMISSIONS
    })
}

/// The permissions to grant for a single-resource request, after consent checks.
pub(super) fn grant_scopes(
    app: &AppRegistration,
    request: &ScopeRequest,
) -> Result<(String, Vec<String>), AadError> {
    if request.resources.len() > 1 {
        return Err(AadError::bad(
            "invalid_scope",
            700022,
            "The provided value for the input parameter scope is not valid because it contains more than one resource. Scope specified must belong to a single resource.",
        ));
    }
    let (resource, asked) = &request.resources[0];
    consented_for(app, resource, asked).map(|perms| (resource.clone(), perms))
}

pub(super) fn consented_for(
    app: &AppRegistration,
    resource: &str,
    asked: &[String],
) -> Result<Vec<String>, AadError> {
    let prefix = format!("{resource}/");
    let consented: BTreeSet<String> = app
        .consented_scopes
        .iter()
        .filter_map(|s| s.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    let missing = asked
        .iter()
        .any(|p| p != ".default" && !consented.contains(p))
        || consented.is_empty();
    if missing {
        return Err(AadError::bad(
            "invalid_grant",
            65001,
            format!(
                "The user or administrator has not consented to use the application with ID '{}'. Send an interactive authorization request for this user and resource.",
                app.client_id
            ),
        )
        .with_suberror("consent_required"));
    }
    Ok(consented.into_iter().collect())
}
