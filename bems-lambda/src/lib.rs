//! # bems-lambda
//!
//! **Not implemented yet.** This crate will hold the SQS batch-processing
//! core, the four stage processors (`InvoiceIngestionProcessor`,
//! `InvoiceReconciliationProcessor`, `InvoiceAuthorizationProcessor`,
//! `InvoicePostingProcessor`) and the Timestream batch writer; see the
//! project's issue "The four stage processors and the Timestream batch
//! writer". It deliberately exports nothing until then, so that nothing can
//! be mistaken for a working processor.
