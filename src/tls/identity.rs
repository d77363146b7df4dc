//! What weir reads out of a certificate: a client's identity (subject and
//! subject alternative names) for routes and upstream headers, a server
//! certificate's DNS names for SNI, and its expiry for metrics.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::X509Name;

use crate::router::ClientCert;

/// The identity in a verified client certificate (DER).
pub fn client_cert(der: &[u8]) -> Option<ClientCert> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::URI(uri) => sans.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => sans.push((*dns).to_owned()),
                GeneralName::RFC822Name(mail) => sans.push((*mail).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_address(bytes) {
                        sans.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Some(ClientCert {
        subject: rfc4514(cert.subject()),
        sans,
    })
}

/// The DNS names a server certificate (DER) is for: its DNS SANs, or its
/// common name when it has none (as old certificates do). Lower case.
pub(super) fn dns_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

/// The end of a certificate's (DER) validity, in seconds since the epoch.
pub(super) fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn ip_address(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// A distinguished name in RFC 4514 form: the last RDN first, `,` between
/// RDNs, `+` within one, special characters escaped; as
/// `openssl x509 -subject -nameopt RFC2253` prints it.
fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type().to_id_string();
                    let key = short_name(&oid).map_or(oid.clone(), str::to_owned);
                    let value = match atv.as_str() {
                        Ok(s) => escape(s),
                        // Not a string type: the DER value in hex (RFC 4514 §2.4).
                        Err(_) => format!("#{}", hex(atv.attr_value().data)),
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(dn: &[(rcgen::DnType, &str)], sans: &[&str]) -> rcgen::Certificate {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for (ty, value) in dn {
            params.distinguished_name.push(ty.clone(), *value);
        }
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) if s.contains("://") => rcgen::SanType::URI((*s).try_into().unwrap()),
                Err(_) => rcgen::SanType::DnsName((*s).try_into().unwrap()),
            })
            .collect();
        params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
    }

    #[test]
    fn the_subject_reads_as_openssl_prints_it_in_rfc2253_form() {
        use rcgen::DnType::*;
        let cert = issued(
            &[
                (CountryName, "DE"),
                (OrganizationName, "Example, Inc."),
                (CommonName, "api"),
            ],
            &[],
        );
        let id = client_cert(cert.der()).unwrap();
        // rcgen writes the CN first; RFC 4514 prints the last RDN first,
        // with special characters escaped. This is exactly what
        // `openssl x509 -noout -subject -nameopt RFC2253` prints for it.
        assert_eq!(id.subject, r"O=Example\, Inc.,C=DE,CN=api");
    }

    #[test]
    fn every_kind_of_san_is_read_in_order() {
        let cert = issued(
            &[(rcgen::DnType::CommonName, "svc")],
            &[
                "spiffe://example.org/ns/shop/sa/api",
                "api.internal",
                "10.0.0.7",
                "::1",
            ],
        );
        let id = client_cert(cert.der()).unwrap();
        assert_eq!(
            id.sans,
            [
                "spiffe://example.org/ns/shop/sa/api",
                "api.internal",
                "10.0.0.7",
                "::1"
            ]
        );
        assert_eq!(dns_names(cert.der()), ["api.internal"]);
    }

    #[test]
    fn a_certificate_without_dns_sans_is_named_by_its_common_name() {
        let cert = issued(&[(rcgen::DnType::CommonName, "Legacy.Example")], &[]);
        assert_eq!(dns_names(cert.der()), ["legacy.example"]);
    }

    #[test]
    fn garbage_is_no_identity() {
        assert_eq!(client_cert(b"not a certificate"), None);
        assert!(dns_names(b"junk").is_empty());
        assert_eq!(not_after(b"junk"), None);
    }
}
