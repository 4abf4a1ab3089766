//! An NVIDIA GPU's attestation report, parsed: the SPDM 1.1 GET_MEASUREMENTS request the driver
//! sent (with the verifier's nonce) followed by the GPU's MEASUREMENTS response, signed by the
//! GPU's attestation key over both. Pure; every refusal names the part of the report it is about.
//!
//! Layout (DMTF DSP0274 1.1, as NVIDIA's driver returns it):
//! - request, 37 bytes: version, code `0xE0`, param1, param2, nonce (32), slot;
//! - response: version, code `0x60`, param1, param2, number of blocks (1), record length (3, LE),
//!   the measurement record, nonce (32), opaque length (2, LE), opaque data, signature (96:
//!   ECDSA P-384 r ‖ s).

use std::collections::BTreeMap;

const REQUEST_BYTES: usize = 37;
const GET_MEASUREMENTS: u8 = 0xE0;
const MEASUREMENTS: u8 = 0x60;
/// The measurement specification every block must follow: DMTF.
const DMTF_SPECIFICATION: u8 = 1;
pub const SIGNATURE_BYTES: usize = 96;

/// Opaque data fields NVIDIA's driver adds to the response (its `OPAQUE_FIELD_ID_*`).
pub const OPAQUE_DRIVER_VERSION: u16 = 3;
pub const OPAQUE_VBIOS_VERSION: u16 = 6;
pub const OPAQUE_NVDEC0_STATUS: u16 = 11;
/// NVDEC0's status when disabled (enabled is `0xAA`).
pub const NVDEC_DISABLED: u8 = 0x55;
pub const OPAQUE_FWID: u16 = 20;

/// A parsed report. `signed` is what the signature covers: the request and the response up to
/// the signature, exactly as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestationReport<'a> {
    /// The nonce the verifier asked the GPU to sign over.
    pub request_nonce: [u8; 32],
    /// Measurement blocks by index.
    pub measurements: BTreeMap<u8, &'a [u8]>,
    pub opaque: BTreeMap<u16, &'a [u8]>,
    pub signed: &'a [u8],
    pub signature: &'a [u8],
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("attestationReport.{field}: {rule}")]
pub struct ReportError {
    pub field: &'static str,
    pub rule: String,
}

fn error(field: &'static str, rule: impl Into<String>) -> ReportError {
    ReportError {
        field,
        rule: rule.into(),
    }
}

/// A cursor that names the field it failed to read.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ReportError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            error(
                field,
                format!(
                    "needs {n} bytes at offset {}, the report has {}",
                    self.at,
                    self.bytes.len()
                ),
            )
        })?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, ReportError> {
        Ok(self.take(1, field)?[0])
    }

    fn le(&mut self, n: usize, field: &'static str) -> Result<usize, ReportError> {
        Ok(self
            .take(n, field)?
            .iter()
            .rev()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b)))
    }
}

/// Parses `report` (request ‖ response) without trusting any length in it.
pub fn parse(report: &[u8]) -> Result<AttestationReport<'_>, ReportError> {
    let mut c = Cursor {
        bytes: report,
        at: 0,
    };
    let request = c.take(REQUEST_BYTES, "request")?;
    if request[1] != GET_MEASUREMENTS {
        return Err(error(
            "request.code",
            format!(
                "is {:#04x}, not GET_MEASUREMENTS ({GET_MEASUREMENTS:#04x})",
                request[1]
            ),
        ));
    }
    let mut request_nonce = [0; 32];
    request_nonce.copy_from_slice(&request[4..36]);

    c.byte("response.version")?;
    let code = c.byte("response.code")?;
    if code != MEASUREMENTS {
        return Err(error(
            "response.code",
            format!("is {code:#04x}, not MEASUREMENTS ({MEASUREMENTS:#04x})"),
        ));
    }
    c.take(2, "response.params")?;
    let blocks = c.byte("response.numberOfBlocks")?;
    let record_length = c.le(3, "response.measurementRecordLength")?;
    let record = c.take(record_length, "response.measurementRecord")?;
    let measurements = parse_record(record, blocks)?;
    c.take(32, "response.nonce")?;
    let opaque_length = c.le(2, "response.opaqueLength")?;
    let opaque = parse_opaque(c.take(opaque_length, "response.opaqueData")?)?;
    let signed_end = c.at;
    let signature = c.take(SIGNATURE_BYTES, "response.signature")?;
    if c.at != report.len() {
        return Err(error(
            "response.signature",
            format!(
                "is followed by {} bytes; the report must end with it",
                report.len() - c.at
            ),
        ));
    }
    Ok(AttestationReport {
        request_nonce,
        measurements,
        opaque,
        signed: &report[..signed_end],
        signature,
    })
}

fn parse_record(record: &[u8], blocks: u8) -> Result<BTreeMap<u8, &[u8]>, ReportError> {
    if blocks == 0 {
        return Err(error("response.numberOfBlocks", "is 0; a report measures"));
    }
    let mut c = Cursor {
        bytes: record,
        at: 0,
    };
    let mut measurements = BTreeMap::new();
    for _ in 0..blocks {
        let index = c.byte("response.measurementRecord.index")?;
        if c.byte("response.measurementRecord.specification")? != DMTF_SPECIFICATION {
            return Err(error(
                "response.measurementRecord.specification",
                format!("block {index} does not follow the DMTF measurement specification"),
            ));
        }
        let size = c.le(2, "response.measurementRecord.size")?;
        let block = c.take(size, "response.measurementRecord.measurement")?;
        // DMTF measurement: value type (1), value size (2, LE), value.
        let mut m = Cursor {
            bytes: block,
            at: 0,
        };
        m.byte("response.measurementRecord.valueType")?;
        let value_size = m.le(2, "response.measurementRecord.valueSize")?;
        let value = m.take(value_size, "response.measurementRecord.value")?;
        if m.at != block.len() || measurements.insert(index, value).is_some() {
            return Err(error(
                "response.measurementRecord",
                format!("block {index} is malformed or repeated"),
            ));
        }
    }
    if c.at != record.len() {
        return Err(error(
            "response.measurementRecordLength",
            "does not match the blocks it holds",
        ));
    }
    Ok(measurements)
}

fn parse_opaque(data: &[u8]) -> Result<BTreeMap<u16, &[u8]>, ReportError> {
    let mut c = Cursor { bytes: data, at: 0 };
    let mut fields = BTreeMap::new();
    while c.at < data.len() {
        let kind = u16::try_from(c.le(2, "response.opaqueData.type")?).unwrap_or(u16::MAX);
        let size = c.le(2, "response.opaqueData.size")?;
        let value = c.take(size, "response.opaqueData.value")?;
        if fields.insert(kind, value).is_some() {
            return Err(error(
                "response.opaqueData",
                format!("field {kind} is repeated"),
            ));
        }
    }
    Ok(fields)
}

/// The driver version as the report states it (NUL-terminated text).
pub fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches('\0')
        .to_string()
}

/// The VBIOS version as NVIDIA's tools print it (`96.00.9F.00.01`): the little-endian value's
/// upper half, then the low byte of the lower half, as dot-separated hex pairs.
pub fn vbios_version(value: &[u8]) -> String {
    let hex: String = value.iter().rev().map(|b| format!("{b:02X}")).collect();
    let half = hex.len() / 2;
    if half < 2 {
        return hex;
    }
    let digits = format!("{}{}", &hex[half..], &hex[half - 2..half]);
    digits
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(".")
}
