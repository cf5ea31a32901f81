//! Envoy's HTTP fault filter config (`envoy.filters.http.fault`): on the listener, and per route
//! in `typed_per_filter_config`.

use std::time::Duration;

use strait_proto::xds::envoy::extensions::filters::common::fault::v3::FaultDelay as EnvoyDelay;
use strait_proto::xds::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use strait_proto::xds::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use strait_proto::xds::envoy::extensions::filters::http::fault::v3::{
    FaultAbort as EnvoyAbort, HttpFault,
};
use strait_proto::xds::envoy::r#type::v3::FractionalPercent;
use strait_proto::xds::envoy::r#type::v3::fractional_percent::DenominatorType;

use super::common::{Result, duration, nothing_else};
use super::error::{At, FieldError};

/// Name of the fault filter.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// A share of requests, in parts per million (0 to 1 000 000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerMillion(pub u32);

impl PerMillion {
    /// Whether a uniform draw `r` in `0..1_000_000` falls in the share.
    pub fn hit(self, r: u32) -> bool {
        r < self.0
    }
}

/// Delay requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultDelay {
    /// How long.
    pub delay: Duration,
    /// Which share of requests.
    pub percentage: PerMillion,
}

/// Abort requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultAbort {
    /// Status to answer (200–599).
    pub http_status: u16,
    /// Which share of requests.
    pub percentage: PerMillion,
}

/// Fault injection for a listener or a route (a route's replaces the listener's).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultConfig {
    /// Delay, if any.
    pub delay: Option<FaultDelay>,
    /// Abort, if any.
    pub abort: Option<FaultAbort>,
}

pub(crate) fn fraction(p: Option<FractionalPercent>) -> Result<PerMillion> {
    // Envoy: an unset percentage means 100 %.
    let Some(p) = p else {
        return Ok(PerMillion(1_000_000));
    };
    let scale: u64 = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => {
            return Err(FieldError::new(
                "denominator",
                format!("{} is not a denominator", p.denominator),
            ));
        }
    };
    // Envoy caps a numerator above the denominator at 100 %.
    let v = (u64::from(p.numerator) * scale).min(1_000_000);
    Ok(PerMillion(u32::try_from(v).unwrap_or(1_000_000)))
}

fn delay(mut d: EnvoyDelay) -> Result<FaultDelay> {
    let delay = match d.fault_delay_secifier.take() {
        Some(FaultDelaySecifier::FixedDelay(t)) => duration("fixed_delay", t)?,
        _ => {
            return Err(FieldError::new(
                "fixed_delay",
                "only fixed delays are supported",
            ));
        }
    };
    let percentage = fraction(d.percentage.take()).at("percentage")?;
    nothing_else(&d)?;
    Ok(FaultDelay { delay, percentage })
}

fn abort(mut a: EnvoyAbort) -> Result<FaultAbort> {
    let http_status = match a.error_type.take() {
        Some(ErrorType::HttpStatus(s)) => u16::try_from(s)
            .ok()
            .filter(|s| (200..600).contains(s))
            .ok_or_else(|| FieldError::new("http_status", format!("{s} is not 200–599")))?,
        _ => {
            return Err(FieldError::new(
                "http_status",
                "only HTTP status aborts are supported",
            ));
        }
    };
    let percentage = fraction(a.percentage.take()).at("percentage")?;
    nothing_else(&a)?;
    Ok(FaultAbort {
        http_status,
        percentage,
    })
}

pub(crate) fn fault(mut f: HttpFault) -> Result<FaultConfig> {
    let out = FaultConfig {
        delay: f.delay.take().map(delay).transpose().at("delay")?,
        abort: f.abort.take().map(abort).transpose().at("abort")?,
    };
    nothing_else(&f)?;
    Ok(out)
}
