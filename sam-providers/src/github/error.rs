//! Classification of GitHub REST errors: `{"message", "documentation_url", "status"}`.
//!
//! GitHub has no machine-readable error code, so the status decides, with the rate
//! limit headers telling a rate limit from a refusal on 403.

use std::time::Duration;

use sam_core::{ErrorCategory, GithubError};

use crate::classify::{by_status, parse, plain_message, text};
use crate::http::Reply;

/// Classifies a failed GitHub response.
pub(crate) fn classify(reply: &Reply) -> GithubError {
    let value = parse(&reply.body);
    let message =
        text(&value, "/message").map_or_else(|| plain_message(&reply.body), str::to_owned);
    let category = category(
        reply.status,
        reply.rate_limit_exhausted,
        reply.retry_after,
        &message,
    );
    let message = if message.is_empty() {
        format!("GitHub answered HTTP status {}", reply.status)
    } else {
        message
    };
    let mut error = GithubError::new(category, message).with_status(reply.status);
    if category == ErrorCategory::RateLimited {
        // GitHub asks for at least a minute when it sends no hint (secondary limits).
        let wait = reply.retry_after.unwrap_or(Duration::from_secs(60));
        error = error.with_retry_after(wait);
    }
    error
}

fn category(
    status: u16,
    exhausted: bool,
    retry_after: Option<Duration>,
    message: &str,
) -> ErrorCategory {
    match status {
        // A 403 is a rate limit when the headers say so, or (secondary limits, which
        // may come without headers) when GitHub's message says so; otherwise the App
        // or token lacks the permission.
        403 if exhausted
            || retry_after.is_some()
            || message.to_ascii_lowercase().contains("rate limit") =>
        {
            ErrorCategory::RateLimited
        }
        401 | 403 => ErrorCategory::AuthError,
        422 => ErrorCategory::InvalidConfig,
        other => by_status(Some(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        status: u16,
        exhausted: bool,
        retry_after: Option<u64>,
        body: &str,
        expected: ErrorCategory,
    ) {
        let reply = Reply {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            rate_limit_exhausted: exhausted,
            body: body.to_owned(),
        };
        let error = classify(&reply);
        assert_eq!(
            sam_core::Classify::category(&error),
            expected,
            "{status} {body}: {error:?}"
        );
        assert_eq!(error.status(), Some(status));
    }

    #[test]
    fn github_statuses() {
        use ErrorCategory::*;
        let bad_credentials = r#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}"#;
        let jwt_expired = r#"{"message":"'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires","documentation_url":"https://docs.github.com/rest"}"#;
        let forbidden = r#"{"message":"Resource not accessible by integration","documentation_url":"https://docs.github.com/rest/apps/apps#create-an-installation-access-token-for-an-app","status":"403"}"#;
        let primary = r#"{"message":"API rate limit exceeded for installation ID 4242.","documentation_url":"https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"}"#;
        let secondary = r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"https://docs.github.com/free-pro-team@latest/rest/overview/resources-in-the-rest-api#secondary-rate-limits"}"#;
        let not_found = r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest/apps/apps#get-an-installation-for-the-authenticated-app","status":"404"}"#;
        let invalid = r#"{"message":"Validation Failed","errors":[{"resource":"PullRequest","code":"custom","message":"A pull request already exists for acme:sam/fix-1."}],"documentation_url":"https://docs.github.com/rest/pulls/pulls#create-a-pull-request","status":"422"}"#;
        check(401, false, None, bad_credentials, AuthError);
        check(401, false, None, jwt_expired, AuthError);
        check(403, false, None, forbidden, AuthError);
        check(403, true, Some(42), primary, RateLimited);
        check(403, false, None, secondary, RateLimited);
        check(403, false, Some(60), "", RateLimited);
        check(429, false, Some(5), secondary, RateLimited);
        check(404, false, None, not_found, NotFound);
        check(422, false, None, invalid, InvalidConfig);
        check(500, false, None, "", Transient);
        check(502, false, None, "<html>Bad Gateway</html>", Transient);
        check(503, false, None, "{}", Transient);
        check(418, false, None, "", Unknown);
    }

    #[test]
    fn rate_limits_carry_their_wait() {
        let reply = Reply {
            status: 403,
            retry_after: Some(Duration::from_secs(42)),
            rate_limit_exhausted: true,
            body: r#"{"message":"API rate limit exceeded"}"#.to_owned(),
        };
        assert_eq!(
            sam_core::Classify::retry_after(&classify(&reply)),
            Some(Duration::from_secs(42))
        );
        let secondary = Reply {
            retry_after: None,
            rate_limit_exhausted: false,
            ..reply
        };
        assert_eq!(
            sam_core::Classify::retry_after(&classify(&secondary)),
            Some(Duration::from_secs(60))
        );
    }
}
