//! Synthetic invoice traffic with a month-end surge.
//!
//! The rate climbs linearly from a steady base to the peak over the ramp,
//! then holds it ([`Profile::rate_at`]). Invoices look like a European
//! company's month-end: log-normal amounts (median about 2,500), a currency
//! mix led by EUR and USD (JPY in whole yen), a dozen vendors in six
//! countries, payment terms from 30 to 365 days. A small share is invalid
//! (refused by validation, never sent) and a small share fails on purpose
//! (above the automatic approval limit, with no approver: it ends in the
//! authorization DLQ with its reason).

use std::time::Duration;

use bems_core::fields::{
    AccountId, CellId, CorrelationId, CountryCode, EventId, InvoiceId, Producer, Region, TaxId, VendorId, VendorName,
};
use bems_core::{
    Amount, Currency, InvoiceEvent, Metadata, NetDays, Partition, PaymentTerms, SCHEMA_VERSION, Stage, Status, Vendor,
};
use chrono::{Days, Utc};

/// Events per minute over time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Profile {
    /// The steady rate before the surge, status events per minute.
    pub(crate) base_per_min: f64,
    /// The month-end peak, status events per minute.
    pub(crate) peak_per_min: f64,
    /// How long the climb from base to peak takes.
    pub(crate) ramp: Duration,
}

impl Profile {
    /// Status events per minute `elapsed` into the run.
    pub(crate) fn rate_at(&self, elapsed: Duration) -> f64 {
        let progress =
            if self.ramp.is_zero() { 1.0 } else { (elapsed.as_secs_f64() / self.ramp.as_secs_f64()).min(1.0) };
        self.base_per_min + (self.peak_per_min - self.base_per_min) * progress
    }

    /// New invoices per second at `elapsed`: each invoice makes five status
    /// events (submitted, then one per stage).
    pub(crate) fn invoices_per_sec(&self, elapsed: Duration) -> f64 {
        self.rate_at(elapsed) / 60.0 / 5.0
    }
}

/// A vendor: id, name, country, tax id.
const VENDORS: [(&str, &str, &str, &str); 12] = [
    ("V-1001", "Acme Industriebedarf GmbH", "DE", "DE123456789"),
    ("V-1002", "Nordlicht Logistik GmbH", "DE", "DE987654321"),
    ("V-2203", "Alpenländische Maschinenbau AG", "AT", "ATU12345678"),
    ("V-3110", "Helvetia Präzision SA", "CH", "CHE123456789"),
    ("V-4007", "Thames Office Supplies Ltd", "GB", "GB123456789"),
    ("V-4015", "Northern Steel plc", "GB", "GB987654321"),
    ("V-5021", "Lakeside Software Inc.", "US", "US12-3456789"),
    ("V-5033", "Pacific Freight LLC", "US", "US98-7654321"),
    ("V-6002", "Kobe Components K.K.", "JP", "JP1234567890123"),
    ("V-7004", "Svea Energi AB", "SE", "SE556677889901"),
    ("V-7011", "Göta Förpackning AB", "SE", "SE556611223301"),
    ("V-1044", "Rheinische Reinigung KG", "DE", "DE112233445"),
];

/// Currencies and their shares (of 100).
const CURRENCIES: [(&str, u32); 6] = [("EUR", 45), ("USD", 30), ("GBP", 10), ("CHF", 5), ("JPY", 5), ("SEK", 5)];

/// Payment terms in days and their shares (of 100).
const TERMS: [(u16, u32); 7] = [(30, 40), (45, 10), (60, 20), (90, 15), (120, 8), (180, 5), (365, 2)];

fn weighted<T: Copy>(choices: &[(T, u32)], rng: &mut fastrand::Rng) -> T {
    let total: u32 = choices.iter().map(|(_, w)| w).sum();
    let mut pick = rng.u32(0..total);
    for (value, weight) in choices {
        if pick < *weight {
            return *value;
        }
        pick -= weight;
    }
    choices[0].0
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let (u1, u2) = (rng.f64().max(f64::MIN_POSITIVE), rng.f64());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// What the generator made.
#[derive(Debug, Clone)]
pub(crate) enum Made {
    /// A valid submission; `failing` when it will be refused approval.
    Valid {
        /// The event.
        event: Box<InvoiceEvent>,
        /// Above the automatic approval limit on purpose.
        failing: bool,
    },
    /// An invalid payload and the first problem validation found.
    Invalid(String),
}

/// Makes invoices.
pub(crate) struct Generator {
    rng: fastrand::Rng,
    run: String,
    next: u64,
    failing_share: f64,
    invalid_share: f64,
    validator: bems_core::Validator,
}

impl Generator {
    /// A generator whose invoice ids carry `run`, with the given shares of
    /// failing and invalid invoices (0 to 1).
    pub(crate) fn new(run: &str, failing_share: f64, invalid_share: f64, seed: u64) -> Generator {
        Generator {
            rng: fastrand::Rng::with_seed(seed),
            run: run.to_owned(),
            next: 0,
            failing_share,
            invalid_share,
            validator: bems_core::Validator::default(),
        }
    }

    /// The next submission.
    pub(crate) fn make(&mut self) -> anyhow::Result<Made> {
        self.next += 1;
        let invoice_id = InvoiceId::new(format!("INV-{}-{:07}", self.run, self.next))?;
        let currency = weighted(&CURRENCIES, &mut self.rng);
        let failing = self.rng.f64() < self.failing_share;
        // Log-normal amounts, median 2,500 (in EUR terms).
        let mut amount = (2_500.0 * (1.2 * normal(&mut self.rng)).exp()).clamp(10.0, 2_000_000.0);
        if failing {
            // Twice the automatic approval limit: with no approver it waits,
            // then ends in the authorization DLQ.
            amount += 100_000.0;
        }
        let text = if currency == "JPY" { format!("{:.0}", amount * 150.0) } else { format!("{amount:.2}") };
        let (vendor_id, name, country, tax) = VENDORS[self.rng.usize(0..VENDORS.len())];
        let issue_date = Utc::now().date_naive().checked_sub_days(Days::new(self.rng.u64(0..20))).unwrap_or_default();
        let event = InvoiceEvent {
            event_id: EventId::random(),
            invoice_id,
            stage: Stage::Ingestion,
            status: Status::Submitted,
            previous_status: None,
            reason: None,
            amount: Amount::from_json_number(&text)?,
            currency: Currency::new(currency)?,
            occurred_at: Utc::now(),
            previous_occurred_at: None,
            submitted_at: None,
            issue_date,
            vendor: Vendor {
                id: VendorId::new(vendor_id)?,
                name: VendorName::new(name)?,
                country: CountryCode::new(country)?,
                tax_id: Some(TaxId::new(tax)?),
            },
            payment_terms: PaymentTerms::net(issue_date, NetDays::new(i64::from(weighted(&TERMS, &mut self.rng)))?),
            metadata: Metadata {
                schema_version: SCHEMA_VERSION,
                // The publisher places the event in the cell.
                region: Region::new("us-east-1")?,
                account_id: AccountId::new("000000000000")?,
                cell_id: CellId::new("local")?,
                partition: Partition::new(1)?,
                correlation_id: CorrelationId::new(format!("bems-monitor-{}", self.next))?,
                producer: Producer::new("bems-monitor")?,
            },
        };
        if self.rng.f64() < self.invalid_share {
            // What a broken producer sends: a currency code that is not ISO 4217.
            let broken = event.to_json().replace(&format!(r#""currency":"{currency}""#), r#""currency":"EURO""#);
            return Ok(match self.validator.parse(broken.as_bytes()) {
                Err(problems) => {
                    Made::Invalid(problems.as_slice().first().map(ToString::to_string).unwrap_or_default())
                }
                Ok(_) => Made::Valid { event: Box::new(event), failing },
            });
        }
        Ok(Made::Valid { event: Box::new(event), failing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_climbs_from_base_to_peak_over_the_ramp_and_holds() {
        let p = Profile { base_per_min: 600.0, peak_per_min: 3_000.0, ramp: Duration::from_secs(60) };
        assert!((p.rate_at(Duration::ZERO) - 600.0).abs() < 1e-9);
        assert!((p.rate_at(Duration::from_secs(30)) - 1_800.0).abs() < 1e-9);
        assert!((p.rate_at(Duration::from_secs(600)) - 3_000.0).abs() < 1e-9);
        assert!((p.invoices_per_sec(Duration::from_secs(600)) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn invoices_are_valid_varied_and_carry_the_requested_shares() {
        let mut g = Generator::new("T", 0.05, 0.02, 7);
        let (mut valid, mut failing, mut invalid) = (0, 0, 0);
        let mut currencies = std::collections::BTreeSet::new();
        let mut terms = std::collections::BTreeSet::new();
        let validator = bems_core::Validator::default();
        for _ in 0..4_000 {
            match g.make().expect("made") {
                Made::Valid { event, failing: f } => {
                    validator.parse(event.to_json().as_bytes()).expect("a valid event");
                    valid += 1;
                    failing += usize::from(f);
                    currencies.insert(event.currency.code().to_owned());
                    terms.insert(event.payment_terms.net_days.get());
                }
                Made::Invalid(problem) => {
                    assert!(problem.starts_with("currency: "), "{problem}");
                    invalid += 1;
                }
            }
        }
        assert_eq!(valid + invalid, 4_000);
        assert!((40..=120).contains(&invalid), "{invalid} invalid of 4,000 at 2%");
        assert!((120..=280).contains(&failing), "{failing} failing of ~3,900 at 5%");
        assert_eq!(currencies.len(), 6);
        assert_eq!(terms.into_iter().collect::<Vec<_>>(), [30, 45, 60, 90, 120, 180, 365]);
    }
}
