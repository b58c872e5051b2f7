//! TLS for the operators' HTTP connections (ClickHouse, webhooks): trusting a private CA named
//! in the connection URI, and saying plainly when a server's certificate is not trusted.
//!
//! A connection names the CA that signed its server's certificate the way a PostgreSQL URL
//! does, with `sslrootcert=/path/ca.pem` (PEM, one or more certificates). Like sqlx's
//! PostgreSQL driver, the CA is trusted besides the public web roots that reqwest carries. The
//! parameter is sluice's, not the server's: it is removed from the URL before any request, so
//! a local file path never reaches a receiver.

use url::Url;

use sluice_operator_api::{Connection, OperatorError};

/// The URI query parameter naming a CA file, as in PostgreSQL connection URIs.
pub(crate) const ROOT_CERT_PARAM: &str = "sslrootcert";

/// The CA file a connection names, if any, and its URI without the parameter.
pub(crate) fn split_root_cert(uri: &Url) -> (Option<String>, Url) {
    let mut root_cert = None;
    let mut rest = Vec::new();
    for (key, value) in uri.query_pairs() {
        if key == ROOT_CERT_PARAM {
            root_cert = Some(value.into_owned());
        } else {
            rest.push((key.into_owned(), value.into_owned()));
        }
    }
    let mut stripped = uri.clone();
    if rest.is_empty() {
        stripped.set_query(None);
    } else if root_cert.is_some() {
        stripped.query_pairs_mut().clear().extend_pairs(rest);
    }
    (root_cert, stripped)
}

/// `builder` trusting the CA file `conn` names (if any). Errors name the connection and the
/// file; a missing, unreadable or certificate-less file is fatal (another try reads the same).
pub(crate) fn trust_root_cert(
    conn: &Connection,
    root_cert: Option<&str>,
    mut builder: reqwest::ClientBuilder,
) -> Result<reqwest::ClientBuilder, OperatorError> {
    let Some(path) = root_cert else {
        return Ok(builder);
    };
    let fail = |why: String| {
        OperatorError::fatal(format!(
            "connection {conn}: {ROOT_CERT_PARAM} {path}: {why}"
        ))
    };
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| fail(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(fail("holds no PEM certificate".into()));
    }
    for cert in certs {
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

/// The reason when `error` (or an error under it) is a TLS failure such as an untrusted or
/// mismatched server certificate: a setting to fix, not a hiccup another attempt could outlast.
///
/// rustls reports these through an `io::Error` whose text is rustls' own (`invalid peer
/// certificate: UnknownIssuer`, `received fatal alert: …`), which is matched here so no rustls
/// types leak into this crate's API.
pub(crate) fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    // The innermost match is rustls' own words, without the wrappers' prefixes.
    let mut found = None;
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if text.contains("invalid peer certificate")
            || text.contains("peer sent no certificates")
            || refusing_alert(&text)
        {
            found = Some(text);
        }
        current = e.source();
    }
    found
}

/// Whether `text` is a fatal alert by which the server refuses this client's settings (its
/// certificate, the protocol version, the ciphers): a setting to fix. Other alerts (an
/// `InternalError` from a proxy restarting, a `DecodeError`) may pass: they are retried.
fn refusing_alert(text: &str) -> bool {
    const REFUSALS: [&str; 10] = [
        "BadCertificate",
        "UnsupportedCertificate",
        "CertificateRevoked",
        "CertificateExpired",
        "CertificateUnknown",
        "UnknownCA",
        "AccessDenied",
        "ProtocolVersion",
        "HandshakeFailure",
        "InsufficientSecurity",
    ];
    text.strip_prefix("received fatal alert")
        .is_some_and(|alert| REFUSALS.iter().any(|r| alert.contains(r)))
}

/// What a user reads for a TLS failure with `host`: what happened in words, rustls' own
/// (`detail`) for searching, and what was trusted.
pub(crate) fn explain_tls_failure(host: &str, detail: &str, root_cert: Option<&str>) -> String {
    let what = if detail.contains("UnknownIssuer") {
        "its certificate is not signed by a trusted CA"
    } else if detail.contains("not valid for name") || detail.contains("NotValidForName") {
        "its certificate is not for this host name"
    } else if detail.contains("Expired") {
        "its certificate has expired"
    } else {
        "its certificate was refused"
    };
    let trusted = match root_cert {
        Some(path) => format!("the CA in {ROOT_CERT_PARAM} {path} and the public web roots"),
        None => format!(
            "the public web roots only; name a private CA with ?{ROOT_CERT_PARAM}=/path/ca.pem"
        ),
    };
    format!("TLS handshake with {host} failed: {what} ({detail}); trusted: {trusted}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_alerts_that_refuse_the_settings_are_failures_to_fix() {
        assert!(super::refusing_alert("received fatal alert: UnknownCA"));
        assert!(super::refusing_alert(
            "received fatal alert: HandshakeFailure"
        ));
        assert!(!super::refusing_alert(
            "received fatal alert: InternalError"
        ));
        assert!(!super::refusing_alert("received fatal alert: DecodeError"));
        assert!(!super::refusing_alert("connection reset by peer"));
    }

    use super::*;

    #[test]
    fn the_ca_parameter_is_taken_out_of_the_url_and_the_rest_kept() {
        let uri = Url::parse("https://h:1/base?sslrootcert=%2Ftmp%2Fca.pem&x=1").unwrap();
        let (ca, rest) = split_root_cert(&uri);
        assert_eq!(ca.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(rest.as_str(), "https://h:1/base?x=1");
        let (ca, rest) = split_root_cert(&Url::parse("https://h/?sslrootcert=/a.pem").unwrap());
        assert_eq!(
            (ca.as_deref(), rest.as_str()),
            (Some("/a.pem"), "https://h/")
        );
        let plain = Url::parse("https://h/p?x=1").unwrap();
        assert_eq!(split_root_cert(&plain), (None, plain.clone()));
    }

    #[test]
    fn a_missing_or_empty_ca_file_names_the_connection_and_the_file() {
        let conn = Connection::parse("hook", "https://u:s3cret@h/?sslrootcert=/nope.pem").unwrap();
        let err = trust_root_cert(&conn, Some("/nope.pem"), reqwest::Client::builder())
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.contains("hook") && text.contains("sslrootcert /nope.pem: cannot read it"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let path = empty.path().to_str().unwrap();
        let text = trust_root_cert(&conn, Some(path), reqwest::Client::builder())
            .err()
            .unwrap()
            .to_string();
        assert!(text.contains("holds no PEM certificate"), "{text}");
    }
}
