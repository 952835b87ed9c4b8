//! The control plane's side of a served repository: git's smart HTTP protocol for a
//! repository on the control plane's machine, answered by `git http-backend`.
//!
//! A QEMU VM cannot read its host's paths, so a task naming a local repository is
//! cloned from, and its output branch pushed to, `…/v1/workspaces/{id}/repo` on the
//! control plane ([`crate::plane::routes::git_router`]), with the workspace token.
//! This module runs git's own server side (`git http-backend`, the CGI program git
//! ships for exactly this) once per request: its environment is the allow-list of
//! [`sam_core::environment`] and the CGI variables; the request body streams into it
//! and its output streams back; it is killed past the timeout. Only the smart
//! protocol's three exchanges are served ([`GitService`]): git's "dumb" file-by-file
//! protocol is not. A push may update the workspace's output branch only (its
//! commands are read before git sees the request, [`push_commands`]), and may
//! neither delete nor rewrite it (`receive.denyDeletes`,
//! `receive.denyNonFastForwards`): nothing a workspace does can lose a commit of the
//! user's or touch another branch.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures::TryStreamExt as _;
use sam_core::ErrorCategory;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

use crate::wire::ApiError;

/// The largest request body git may send (a push's pack), in bytes: 2 GiB.
pub const MAX_REQUEST_BYTES: u64 = 2 << 30;

/// The most bytes of CGI headers `git http-backend` may write before its body.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// One exchange of git's smart HTTP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitService {
    /// `GET info/refs?service=git-upload-pack` or `…git-receive-pack`: the refs.
    Refs {
        /// Whether the client wants to push (`git-receive-pack`).
        push: bool,
    },
    /// `POST git-upload-pack`: a fetch.
    UploadPack,
    /// `POST git-receive-pack`: a push.
    ReceivePack,
}

impl GitService {
    /// The exchange `method` on `path` (what follows the route) with `query` asks
    /// for; `None` for anything else git's smart protocol does not do.
    ///
    /// ```
    /// use axum::http::Method;
    /// use sam_agent::plane::served_repo::GitService;
    ///
    /// assert_eq!(
    ///     GitService::parse(&Method::GET, "info/refs", Some("service=git-upload-pack")),
    ///     Some(GitService::Refs { push: false })
    /// );
    /// assert_eq!(GitService::parse(&Method::POST, "git-receive-pack", None), Some(GitService::ReceivePack));
    /// assert_eq!(GitService::parse(&Method::GET, "objects/info/packs", None), None);
    /// assert_eq!(GitService::parse(&Method::GET, "info/refs", None), None);
    /// ```
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Option<Self> {
        match (method, path) {
            (&Method::GET, "info/refs") => match query {
                Some("service=git-upload-pack") => Some(Self::Refs { push: false }),
                Some("service=git-receive-pack") => Some(Self::Refs { push: true }),
                _ => None,
            },
            (&Method::POST, "git-upload-pack") => Some(Self::UploadPack),
            (&Method::POST, "git-receive-pack") => Some(Self::ReceivePack),
            _ => None,
        }
    }

    /// The path `git http-backend` gets (`PATH_INFO`).
    fn path_info(self) -> &'static str {
        match self {
            Self::Refs { .. } => "/info/refs",
            Self::UploadPack => "/git-upload-pack",
            Self::ReceivePack => "/git-receive-pack",
        }
    }

    /// The query `git http-backend` gets (`QUERY_STRING`).
    fn query(self) -> &'static str {
        match self {
            Self::Refs { push: false } => "service=git-upload-pack",
            Self::Refs { push: true } => "service=git-receive-pack",
            Self::UploadPack | Self::ReceivePack => "",
        }
    }
}

/// How [`serve`] runs git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The git executable.
    pub program: String,
    /// The longest one exchange may take, body included.
    pub timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            program: "git".to_owned(),
            timeout: sam_core::TimeoutPolicy::default().git_command,
        }
    }
}

/// Answers one smart-protocol exchange on the repository at `repo` (a working copy
/// or a bare repository) for `user` (the workspace, recorded as the pusher), with
/// `headers` and `body` of the request; a push may update `push_ref` only (a full
/// ref name, `refs/heads/…`).
///
/// # Errors
/// `not_found` when `repo` is not a directory; `transient` when git cannot start or
/// writes no valid answer; `invalid_config` for a body over [`MAX_REQUEST_BYTES`]
/// or a push git's protocol does not describe; `403` for a push to another ref.
pub async fn serve(
    options: &ServeOptions,
    repo: &Path,
    user: &str,
    service: GitService,
    headers: &HeaderMap,
    body: Body,
    push_ref: &str,
) -> Result<Response, ApiError> {
    if !repo.is_dir() {
        return Err(ApiError::new(
            ErrorCategory::NotFound,
            &format!("the repository {} is not a directory", repo.display()),
        ));
    }
    let header = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(length) = header(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok())
        && length > MAX_REQUEST_BYTES
    {
        return Err(too_large());
    }
    let body = if service == GitService::ReceivePack {
        if header(header::CONTENT_ENCODING).is_some_and(|e| e != "identity") {
            return Err(ApiError::new(
                ErrorCategory::InvalidConfig,
                "a push must not be compressed (git does not compress pushes)",
            ));
        }
        let (refs, body) = push_commands(body).await?;
        if let Some(other) = refs.iter().find(|r| *r != push_ref) {
            return Err(ApiError::forbidden(&format!(
                "this workspace may push {push_ref} only, not {other}"
            )));
        }
        body
    } else {
        body
    };
    let mut command = tokio::process::Command::new(&options.program);
    command
        .arg("http-backend")
        .kill_on_drop(true)
        .process_group(0)
        .env_clear()
        .envs(sam_core::environment::inherited(
            std::env::vars_os(),
            sam_core::environment::Inherit::Base,
        ))
        .env("GIT_PROJECT_ROOT", repo)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", service.path_info())
        .env("QUERY_STRING", service.query())
        .env(
            "REQUEST_METHOD",
            match service {
                GitService::Refs { .. } => "GET",
                _ => "POST",
            },
        )
        // A user name lets `http-backend` accept pushes (it refuses anonymous ones).
        .env("REMOTE_USER", user)
        // Configuration from the environment, as if given with `-c`: no deleted and
        // no rewritten branch, whatever the repository's own configuration says.
        .env("GIT_CONFIG_COUNT", "2")
        .env("GIT_CONFIG_KEY_0", "receive.denyDeletes")
        .env("GIT_CONFIG_VALUE_0", "true")
        .env("GIT_CONFIG_KEY_1", "receive.denyNonFastForwards")
        .env("GIT_CONFIG_VALUE_1", "true")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (variable, name) in [
        ("CONTENT_TYPE", header::CONTENT_TYPE),
        ("CONTENT_LENGTH", header::CONTENT_LENGTH),
        ("HTTP_CONTENT_ENCODING", header::CONTENT_ENCODING),
        ("GIT_PROTOCOL", HeaderName::from_static("git-protocol")),
    ] {
        if let Some(value) = header(name) {
            command.env(variable, value);
        }
    }
    let mut child = command.spawn().map_err(|e| {
        ApiError::new(
            ErrorCategory::Transient,
            &format!("cannot run {} http-backend: {e}", options.program),
        )
    })?;
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ApiError::new(
            ErrorCategory::Transient,
            "git http-backend started without its pipes",
        ));
    };
    // The request body streams into git; a body over the limit stops short, which
    // git reports as a truncated pack.
    let feed = tokio::spawn(async move {
        let stream = body
            .into_data_stream()
            .map_err(|e| std::io::Error::other(e.to_string()));
        let mut reader = tokio_util::io::StreamReader::new(stream).take(MAX_REQUEST_BYTES + 1);
        let copied = tokio::io::copy(&mut reader, &mut stdin).await;
        let _ = stdin.shutdown().await;
        copied
    });
    // Git lives until it exits or the timeout; its standard error is logged when it
    // fails.
    let timeout = options.timeout;
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw);
    tokio::spawn(async move {
        let mut errors = Vec::new();
        let waited = tokio::time::timeout(timeout, async {
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut errors).await;
            child.wait().await
        })
        .await;
        let fed = feed.await;
        match waited {
            Ok(Ok(status)) if status.success() => {}
            Ok(status) => tracing::warn!(
                ?status,
                stderr = %String::from_utf8_lossy(&errors).trim(),
                "git http-backend failed"
            ),
            Err(_) => {
                if let Some(group) = group {
                    let _ =
                        rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
                tracing::warn!(?timeout, "git http-backend timed out and was killed");
            }
        }
        if let Ok(Ok(copied)) = fed
            && copied > MAX_REQUEST_BYTES
        {
            tracing::warn!(
                limit = MAX_REQUEST_BYTES,
                "a served repository's request body was over the limit and was cut"
            );
        }
    });
    let mut stdout = tokio::io::BufReader::new(stdout);
    let head = tokio::time::timeout(timeout, read_cgi_head(&mut stdout))
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCategory::Transient,
                &format!("git http-backend wrote no answer within {timeout:?}"),
            )
        })??;
    if !head.status.is_success() {
        // Git's own refusals are short plain text; every error this server answers
        // is JSON, with git's words as its message.
        let mut text = String::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            (&mut stdout).take(4096).read_to_string(&mut text),
        )
        .await;
        let category = crate::wire::classify_status(head.status.as_u16());
        let message = format!("git refused the request ({}): {}", head.status, text.trim());
        return Err(if head.status == StatusCode::FORBIDDEN {
            ApiError::forbidden(&message)
        } else {
            ApiError::new(category, &message)
        });
    }
    let mut response = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(stdout)));
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// The most bytes of a push's commands (before its pack).
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Reads the commands at the start of a push (`git-receive-pack`'s request: one
/// pkt-line `<old> <new> <ref>` per ref, the first with its capabilities after a
/// NUL, then a flush `0000`, then the pack) and returns the refs they update, and a
/// body that gives git the whole request again.
///
/// # Errors
/// `invalid_config` for a request that is not such a list within
/// `MAX_COMMAND_BYTES` (a push certificate or shallow lines included: the VM
/// agent's pushes send neither).
pub async fn push_commands(body: Body) -> Result<(Vec<String>, Body), ApiError> {
    use futures::StreamExt as _;
    let bad = |why: &str| {
        ApiError::new(
            ErrorCategory::InvalidConfig,
            &format!("a push this route does not take: {why}"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut read = Vec::new();
    let mut refs = Vec::new();
    let mut at = 0;
    loop {
        // The next pkt-line's length, then the line, reading more as needed.
        let line_end = loop {
            if read.len() >= at + 4 {
                let length = std::str::from_utf8(&read[at..at + 4])
                    .ok()
                    .and_then(|h| usize::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad("a pkt-line length is not hex"))?;
                if length == 0 {
                    break None;
                }
                if length < 5 {
                    return Err(bad("a pkt-line is too short"));
                }
                if read.len() >= at + length {
                    break Some(at + length);
                }
            }
            if read.len() > MAX_COMMAND_BYTES {
                return Err(bad("its commands are too long"));
            }
            match stream.next().await {
                Some(Ok(chunk)) => read.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(bad(&e.to_string())),
                None => return Err(bad("it ended before its commands did")),
            }
        };
        let Some(end) = line_end else {
            break;
        };
        let line = &read[at + 4..end];
        let command = line.split(|b| *b == 0).next().unwrap_or_default();
        let command = std::str::from_utf8(command)
            .map_err(|_| bad("a command is not UTF-8"))?
            .trim_end_matches('\n');
        let mut parts = command.split(' ');
        let (Some(old), Some(new), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(&format!("{command:?} is not a ref update")));
        };
        let oid = |o: &str| o.len() >= 40 && o.chars().all(|c| c.is_ascii_hexdigit());
        if !oid(old) || !oid(new) {
            return Err(bad(&format!("{command:?} is not a ref update")));
        }
        refs.push(name.to_owned());
        at = end;
    }
    if refs.is_empty() {
        return Err(bad("it updates no ref"));
    }
    let head =
        futures::stream::once(async move { Ok::<_, axum::Error>(axum::body::Bytes::from(read)) });
    Ok((refs, Body::from_stream(head.chain(stream))))
}

fn too_large() -> ApiError {
    ApiError::too_large(
        "body",
        &format!("a served repository takes request bodies of at most {MAX_REQUEST_BYTES} bytes"),
    )
}

/// The status and headers of a CGI answer.
#[derive(Debug)]
struct CgiHead {
    status: StatusCode,
    headers: HeaderMap,
}

/// Reads CGI headers (`Name: value` lines up to an empty line; `Status: 404 …`
/// sets the status) from `reader`, leaving it at the body.
async fn read_cgi_head<R>(reader: &mut R) -> Result<CgiHead, ApiError>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let broken = |why: &str| {
        ApiError::new(
            ErrorCategory::Transient,
            &format!("git http-backend wrote a broken answer: {why}"),
        )
    };
    let mut head = CgiHead {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
    };
    let mut read = 0;
    loop {
        let mut line = Vec::new();
        let n = reader
            .take((MAX_HEADER_BYTES - read + 1) as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| broken(&e.to_string()))?;
        read += n;
        if n == 0 {
            return Err(broken("it ended before its headers did"));
        }
        if read > MAX_HEADER_BYTES {
            return Err(broken("its headers are too long"));
        }
        let line = String::from_utf8(line).map_err(|_| broken("a header is not UTF-8"))?;
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok(head);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| broken(&format!("{line:?} is not a header")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().unwrap_or_default();
            head.status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| broken(&format!("status {value:?}")))?;
            continue;
        }
        let name =
            HeaderName::try_from(name).map_err(|_| broken(&format!("header name {name:?}")))?;
        let value =
            HeaderValue::try_from(value).map_err(|_| broken(&format!("header value {value:?}")))?;
        head.headers.append(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(text: &str) -> Result<(CgiHead, String), ApiError> {
        let mut reader = tokio::io::BufReader::new(text.as_bytes());
        let head = read_cgi_head(&mut reader).await?;
        let mut rest = String::new();
        reader.read_to_string(&mut rest).await.unwrap();
        Ok((head, rest))
    }

    #[tokio::test]
    async fn cgi_heads_are_read_up_to_the_body() {
        let (head, rest) = parse("Content-Type: application/x-git-upload-pack-advertisement\r\nPragma: no-cache\r\n\r\n001e# service\n")
            .await
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(
            head.headers[header::CONTENT_TYPE],
            "application/x-git-upload-pack-advertisement"
        );
        assert_eq!(rest, "001e# service\n");
        let (head, rest) = parse("Status: 403 Forbidden\nContent-Type: text/plain\n\nno\n")
            .await
            .unwrap();
        assert_eq!(head.status, StatusCode::FORBIDDEN);
        assert_eq!(rest, "no\n");
    }

    fn pkt(line: &str) -> String {
        format!("{:04x}{line}", line.len() + 4)
    }

    #[tokio::test]
    async fn a_pushs_refs_are_read_and_the_body_given_back_whole() {
        let old = "0".repeat(40);
        let new = "a".repeat(40);
        let request = format!(
            "{}{}0000PACK-bytes",
            pkt(&format!(
                "{old} {new} refs/heads/sam/x\0report-status side-band-64k\n"
            )),
            pkt(&format!("{new} {old} refs/heads/main\n")),
        );
        let (refs, body) = push_commands(Body::from(request.clone())).await.unwrap();
        assert_eq!(refs, ["refs/heads/sam/x", "refs/heads/main"]);
        let given = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(given, request.as_bytes());
    }

    #[tokio::test]
    async fn pushes_the_route_does_not_take_are_invalid() {
        let oid = "b".repeat(40);
        for request in [
            String::new(),
            "0000".to_owned(),
            "zzzz".to_owned(),
            "0003".to_owned(),
            pkt("push-cert\0report-status\n") + "0000",
            pkt(&format!("shallow {oid}\n")) + "0000",
            pkt(&format!("{oid} {oid} refs/heads/x\n")),
            format!("{:04x}", 60_000) + &"a".repeat(MAX_COMMAND_BYTES + 10),
        ] {
            let error = push_commands(Body::from(request.clone()))
                .await
                .unwrap_err();
            assert_eq!(
                error.body().category,
                ErrorCategory::InvalidConfig,
                "{request:?}"
            );
        }
    }

    #[tokio::test]
    async fn broken_heads_are_transient_errors() {
        for text in [
            "",
            "Content-Type: text/plain\r\n",
            "no colon here\n\n",
            "Status: lots\n\n",
            &format!("X-Long: {}\n\n", "a".repeat(MAX_HEADER_BYTES)),
        ] {
            let error = parse(text).await.unwrap_err();
            assert_eq!(error.body().category, ErrorCategory::Transient, "{text:?}");
        }
    }
}
