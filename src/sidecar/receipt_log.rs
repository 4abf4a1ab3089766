//! The meter's receipt log on the pod's emptyDir: every receipt is appended and synced before it
//! is sent, and the highest sequence the collector acknowledged is kept beside it, so a restarted
//! meter resends exactly what was not acknowledged and continues the chain where it stopped.
//!
//! Records are `u32 little-endian length ‖ protobuf Signed`. A record cut short by a crash is
//! dropped at open: it was never sent, as sending follows the sync.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::metering::access;
use crate::metering::chain::{ChainHead, digest};
use crate::wire::proto::{AccessUsage, Receipt, Signed};

const LOG_FILE: &str = "receipts.log";
const ACKED_FILE: &str = "acked";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("receipt log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("receipt log {path}: record {index} is not a receipt: {reason}")]
    Corrupt {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

pub struct ReceiptLog {
    dir: PathBuf,
    file: File,
    /// The chain after the last logged receipt.
    pub head: ChainHead,
    /// The highest sequence the collector acknowledged.
    pub acked: u64,
    /// Logged receipts above `acked`, in order.
    pub pending: Vec<(u64, Signed)>,
    /// Buyer access the logged receipts carry, summed.
    pub access: AccessUsage,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ReceiptLog {
    /// Opens (or creates) the log in `dir`, dropping a torn last record.
    pub fn open(dir: &Path) -> Result<ReceiptLog, LogError> {
        let path = dir.join(LOG_FILE);
        let acked = match std::fs::read_to_string(dir.join(ACKED_FILE)) {
            Ok(text) => text.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&dir.join(ACKED_FILE))(e)),
        };
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io(&path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let mut head = ChainHead::default();
        let mut pending = Vec::new();
        let mut access = AccessUsage::default();
        let end = for_each_record(&path, &bytes, |signed, receipt| {
            head = head.advance(&receipt, digest(&signed.body));
            if let Some(more) = &receipt.access {
                access = access::add(&access, more);
            }
            if receipt.sequence > acked {
                pending.push((receipt.sequence, signed));
            }
        })?;
        let file = OpenOptions::new()
            .create(true)
            .append(false)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        // Cut a torn tail, so the next append starts on a record boundary.
        file.set_len(end as u64).map_err(io(&path))?;
        let mut log = ReceiptLog {
            dir: dir.to_path_buf(),
            file,
            head,
            acked,
            pending,
            access,
        };
        log.seek_end()?;
        Ok(log)
    }

    fn seek_end(&mut self) -> Result<(), LogError> {
        use std::io::Seek;
        let path = self.dir.join(LOG_FILE);
        self.file
            .seek(std::io::SeekFrom::End(0))
            .map(drop)
            .map_err(io(&path))
    }

    /// Appends a receipt and syncs it to disk; only then may it be sent.
    pub fn append(&mut self, signed: Signed, next_head: ChainHead) -> Result<(), LogError> {
        let path = self.dir.join(LOG_FILE);
        let encoded = signed.encode_to_vec();
        let mut record = Vec::with_capacity(4 + encoded.len());
        record.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        record.extend_from_slice(&encoded);
        self.file.write_all(&record).map_err(io(&path))?;
        self.file.sync_data().map_err(io(&path))?;
        // Summed from the logged bytes, as `open` sums them: the log is the one account.
        if let Some(more) = Receipt::decode(signed.body.as_slice())
            .ok()
            .and_then(|r| r.access)
        {
            self.access = access::add(&self.access, &more);
        }
        self.pending.push((next_head.sequence, signed));
        self.head = next_head;
        Ok(())
    }

    /// Records that the collector holds every receipt up to `sequence`.
    pub fn acknowledge(&mut self, sequence: u64) -> Result<(), LogError> {
        if sequence <= self.acked {
            return Ok(());
        }
        let path = self.dir.join(ACKED_FILE);
        let temporary = self.dir.join(format!("{ACKED_FILE}.tmp"));
        std::fs::write(&temporary, sequence.to_string()).map_err(io(&temporary))?;
        std::fs::rename(&temporary, &path).map_err(io(&path))?;
        self.acked = sequence;
        self.pending.retain(|(s, _)| *s > sequence);
        Ok(())
    }

    /// Every logged receipt, acknowledged or not, in order: for audits and tests.
    pub fn read_all(dir: &Path) -> Result<Vec<Receipt>, LogError> {
        let path = dir.join(LOG_FILE);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let mut receipts = Vec::new();
        for_each_record(&path, &bytes, |_, receipt| receipts.push(receipt))?;
        Ok(receipts)
    }
}

/// Calls `each` for every whole record of a log's bytes, in order; returns where the last whole
/// record ends.
fn for_each_record(
    path: &Path,
    bytes: &[u8],
    mut each: impl FnMut(Signed, Receipt),
) -> Result<usize, LogError> {
    let mut offset = 0;
    let mut index = 0;
    while offset + 4 <= bytes.len() {
        let len =
            u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        let Some(record) = bytes.get(offset + 4..offset + 4 + len) else {
            break;
        };
        let corrupt = |reason: String| LogError::Corrupt {
            path: path.to_path_buf(),
            index,
            reason,
        };
        let signed = Signed::decode(record).map_err(|e| corrupt(e.to_string()))?;
        let receipt =
            Receipt::decode(signed.body.as_slice()).map_err(|e| corrupt(e.to_string()))?;
        each(signed, receipt);
        offset += 4 + len;
        index += 1;
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate_key;
    use crate::metering::chain::{WindowReport, seal_receipt};
    use crate::wire::proto::Attribution;

    fn append(log: &mut ReceiptLog, key: &ed25519_dalek::SigningKey, end_ms: i64) {
        append_access(log, key, end_ms, None);
    }

    fn append_access(
        log: &mut ReceiptLog,
        key: &ed25519_dalek::SigningKey,
        end_ms: i64,
        access: Option<AccessUsage>,
    ) {
        let (signed, head) = seal_receipt(
            key,
            "lease-1",
            1,
            &log.head,
            0,
            WindowReport {
                window_end_ms: end_ms,
                attribution: Attribution::AllocationOnly,
                access,
                ..WindowReport::default()
            },
        );
        log.append(signed, head).unwrap();
    }

    #[test]
    fn the_access_the_receipts_carry_is_summed_again_when_the_log_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_key();
        let mut log = ReceiptLog::open(dir.path()).unwrap();
        let window = |to, from| AccessUsage {
            bytes_to_workload: to,
            bytes_from_workload: from,
            connections: 1,
            log_streams: 0,
        };
        append_access(&mut log, &key, 1_000, Some(window(10, 200)));
        append(&mut log, &key, 2_000);
        append_access(&mut log, &key, 3_000, Some(window(5, 50)));
        let carried = window(15, 250);
        assert_eq!(
            log.access,
            AccessUsage {
                connections: 2,
                ..carried
            }
        );
        log.acknowledge(3).unwrap();
        drop(log);
        // A restarted meter must not carry into its receipts again what they already carry.
        let reopened = ReceiptLog::open(dir.path()).unwrap();
        assert_eq!(
            reopened.access,
            AccessUsage {
                connections: 2,
                ..carried
            }
        );
    }

    #[test]
    fn a_reopened_log_continues_the_chain_and_resends_only_what_was_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_key();
        let mut log = ReceiptLog::open(dir.path()).unwrap();
        for end in [1_000, 2_000, 3_000] {
            append(&mut log, &key, end);
        }
        log.acknowledge(2).unwrap();
        let head = log.head.clone();
        drop(log);

        let reopened = ReceiptLog::open(dir.path()).unwrap();
        assert_eq!(reopened.head, head);
        assert_eq!(reopened.acked, 2);
        assert_eq!(
            reopened.pending.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(ReceiptLog::read_all(dir.path()).unwrap().len(), 3);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_next_append_lands_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_key();
        let mut log = ReceiptLog::open(dir.path()).unwrap();
        append(&mut log, &key, 1_000);
        append(&mut log, &key, 2_000);
        drop(log);
        let path = dir.path().join(LOG_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of the second write.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 7)
            .unwrap();

        let mut log = ReceiptLog::open(dir.path()).unwrap();
        assert_eq!(log.head.sequence, 1);
        append(&mut log, &key, 2_500);
        let receipts = ReceiptLog::read_all(dir.path()).unwrap();
        assert_eq!(
            receipts
                .iter()
                .map(|r| (r.sequence, r.window_end_ms))
                .collect::<Vec<_>>(),
            vec![(1, 1_000), (2, 2_500)]
        );
    }

    #[test]
    fn garbage_in_the_log_is_an_error_that_names_the_record() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), [3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
        let err = ReceiptLog::open(dir.path()).err().unwrap();
        assert!(matches!(err, LogError::Corrupt { index: 0, .. }), "{err}");
    }
}
