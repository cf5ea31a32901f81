//! Every contract on Strait's wire.
//!
//! - [`xds`]: Envoy's v3 API, re-exported from `envoy-types`, plus the type URLs we serve.
//! - [`ca`]: Istio's `IstioCertificateService`, field for field.
//! - [`federation`]: Strait's control-plane to control-plane service.
//! - The names every part agrees on: [`identity`] (and [`peer`]: reading one off a certificate),
//!   [`sni`], [`locality`], [`node`].
#![deny(missing_debug_implementations)]

pub mod identity;
pub mod locality;
pub mod node;
pub mod peer;
pub mod sni;
pub mod xds;

mod rules;

/// Istio's CA service (`istio.v1.auth`).
pub mod ca {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("istio.v1.auth");
}

/// Strait's federation service (`strait.federation.v1`).
pub mod federation {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("strait.federation.v1");
}
