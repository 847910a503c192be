//! One layer, streamed: network → compressed digest → decompress → diff_id
//! digest → unpack into staging. The download runs on the async runtime; the
//! CPU-bound half runs on a blocking thread; a small bounded channel joins
//! them, so memory stays flat whatever the layer size.
//!
//! A dropped connection resumes with `Range: bytes=N-`; a registry that
//! ignores Range is handled by skipping what we already have. So does a
//! fetch slower than the minimum transfer rate (a registry trickling bytes
//! would otherwise hold the pull forever: the per-read timeout never fires).
//! Data after the tar end-of-archive marker is bounded ([`TRAILER_LIMIT`]). The layer is
//! committed only when the blob digest, blob size and diff_id all match.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

use crate::digest::{Digest, Hasher, HashingReader};
use crate::registry::config::Source;
use crate::registry::{Compression, Registry, RegistryError};
use crate::store::{LayerRecord, LayerStore};
use crate::unpack::{self, Limits, LowerGate, UnpackError, UnpackOptions, UnpackStats};

/// Chunks in flight between download and unpack. Enough to keep both sides
/// busy; every extra slot is resident memory per concurrent layer.
const CHANNEL_DEPTH: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("layer {digest}: blob is larger than its descriptor's {size} bytes")]
    Oversized { digest: Digest, size: u64 },
    #[error("layer {digest}: blob digest mismatch (got {actual}); the registry served corrupt or substituted data")]
    BlobDigest { digest: Digest, actual: Digest },
    #[error("layer {digest}: blob is {actual} bytes, descriptor says {size}")]
    BlobSize { digest: Digest, size: u64, actual: u64 },
    #[error("layer {digest}: diff_id mismatch: config says {expected}, content is {actual}")]
    DiffId { digest: Digest, expected: Digest, actual: Digest },
    #[error("layer {digest}: {source}")]
    Unpack { digest: Digest, source: UnpackError },
    #[error("layer {digest}: decompressing: {source}")]
    Decompress { digest: Digest, source: io::Error },
    #[error("layer {digest}: more than {limit} bytes of data after the tar end-of-archive marker")]
    Trailer { digest: Digest, limit: u64 },
    #[error("layer {digest}: download failed after {attempts} attempts: {last}")]
    RetriesExhausted { digest: Digest, attempts: u32, last: String },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("layer {digest}: unpack task failed: {reason}")]
    Task { digest: Digest, reason: String },
    #[error(transparent)]
    Decrypt(#[from] crate::ocicrypt::OcicryptError),
}

/// Marks the layer's unpack as abandoned when the pull stops waiting for it.
struct AbortOnDrop(Arc<AtomicBool>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Everything needed to fetch and unpack one layer.
#[derive(Debug, Clone)]
pub struct LayerJob {
    pub source: Source,
    pub blob_digest: Digest,
    pub blob_size: u64,
    pub compression: Compression,
    pub diff_id: Digest,
    pub chain_id: Digest,
    /// Committed directories of the layers below, top-most first.
    pub lower_roots: Vec<PathBuf>,
    /// For an encrypted layer: its unwrapped key. The blob is decrypted as it
    /// streams and the layer commits only after the HMAC has been verified.
    pub decryption: Option<Arc<crate::ocicrypt::LayerKey>>,
}

#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub limits: Limits,
    pub preserve_ownership: bool,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    /// Slowest acceptable blob transfer, in bytes per second averaged over
    /// `rate_window` (0: no minimum). A fetch below it is abandoned and
    /// resumed with Range, counting against `max_retries`. Time spent waiting
    /// for the unpacker (back-pressure) does not count.
    pub min_transfer_rate: u64,
    pub rate_window: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            limits: Limits::default(),
            preserve_ownership: true,
            max_retries: 5,
            retry_backoff: Duration::from_millis(200),
            min_transfer_rate: 1024,
            rate_window: Duration::from_secs(30),
        }
    }
}

/// Most bytes accepted after a layer's end-of-archive marker (tar writers pad
/// to a record, 10 KiB by default, 1 MiB at the largest blocking factor).
/// They are decompressed and hashed for the diff_id: unbounded, a few KiB of
/// compressed zeros after the marker cost seconds of CPU per GiB.
pub const TRAILER_LIMIT: u64 = 1 << 20;

/// The minimum-rate check of one blob fetch: a tumbling window of
/// `rate_window`, extended by the time spent blocked on the unpacker.
struct RateWindow {
    min_rate: u64,
    window: Duration,
    deadline: Option<tokio::time::Instant>,
    bytes: u64,
}

impl RateWindow {
    fn new(opts: &PipelineOptions) -> Self {
        let mut w = RateWindow { min_rate: opts.min_transfer_rate, window: opts.rate_window, deadline: None, bytes: 0 };
        w.restart();
        w
    }

    fn restart(&mut self) {
        self.bytes = 0;
        self.deadline =
            (self.min_rate > 0 && !self.window.is_zero()).then(|| tokio::time::Instant::now() + self.window);
    }

    /// Bytes the window must see.
    fn needed(&self) -> u64 {
        let ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        self.min_rate.saturating_mul(ms) / 1000
    }

    fn pause(&mut self, d: Duration) {
        if let Some(deadline) = self.deadline.as_mut() {
            *deadline += d;
        }
    }

    /// Awaits `fut` until the window ends; `None` when it ended first.
    async fn within<F: std::future::Future>(&self, fut: F) -> Option<F::Output> {
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, fut).await.ok(),
            None => Some(fut.await),
        }
    }

    /// At the end of a window: an error if it saw too few bytes, else a new window.
    fn roll(&mut self) -> Result<(), String> {
        if self.deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            if self.bytes < self.needed() {
                return Err(format!(
                    "transfer rate below {} B/s ({} bytes in {:.0} s)",
                    self.min_rate,
                    self.bytes,
                    self.window.as_secs_f64()
                ));
            }
            self.restart();
        }
        Ok(())
    }
}

/// Feeds the blocking side from the channel as a `Read`.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
    aborted: Arc<AtomicBool>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None if self.aborted.load(Ordering::Acquire) => {
                    // Not `Interrupted`: `io::copy` and `read_exact` retry that forever.
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "download aborted"));
                }
                None => return Ok(0),
            }
        }
        // Copies min(buf.len(), current.len()) bytes.
        let n = (&*self.current).read(buf)?;
        self.current.advance(n);
        Ok(n)
    }
}

pub(crate) fn decoder<'a, R: Read + Send + 'a>(
    compression: Compression,
    r: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(64 * 1024, r))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Fetches, verifies and unpacks one layer into the store.
pub async fn fetch_layer(
    registry: &Registry,
    store: &LayerStore,
    job: &LayerJob,
    opts: &PipelineOptions,
) -> Result<LayerRecord, LayerError> {
    let started = Instant::now();
    let staging = store.begin(&job.chain_id)?;
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let aborted = Arc::new(AtomicBool::new(false));
    let reader = ChannelReader { rx, current: Bytes::new(), aborted: aborted.clone() };

    let _abort_if_dropped = AbortOnDrop(aborted.clone());
    let unpack_job = job.clone();
    // Layers unpack concurrently; one that needs the layers below it (a
    // hardlink into them, an implicit parent directory) waits here until they
    // are committed, or until this pull is abandoned.
    let gate = {
        let lowers = job.lower_roots.clone();
        let aborted = aborted.clone();
        LowerGate(Arc::new(move || {
            while !lowers.iter().all(|p| p.is_dir()) {
                if aborted.load(Ordering::Acquire) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            true
        }))
    };
    let unpack_opts = opts.clone();
    let root = staging.path().to_owned();
    let unpacker = tokio::task::spawn_blocking(move || -> Result<(UnpackStats, Digest, u64), LayerError> {
        let digest = unpack_job.blob_digest.clone();
        let decoded = decoder(unpack_job.compression, reader)
            .map_err(|source| LayerError::Decompress { digest: digest.clone(), source })?;
        let mut hashed = HashingReader::new(decoded);
        let options = UnpackOptions {
            lower_roots: &unpack_job.lower_roots,
            lower_gate: Some(gate),
            limits: unpack_opts.limits,
            preserve_ownership: unpack_opts.preserve_ownership,
        };
        let stats = unpack::unpack_layer(&mut hashed, &root, &options)
            .map_err(|source| LayerError::Unpack { digest: digest.clone(), source })?;
        // Only tar padding may follow the end-of-archive marker; bounded.
        let trailing = io::copy(&mut (&mut hashed).take(TRAILER_LIMIT + 1), &mut io::sink())
            .map_err(|source| LayerError::Decompress { digest: digest.clone(), source })?;
        if trailing > TRAILER_LIMIT {
            return Err(LayerError::Trailer { digest, limit: TRAILER_LIMIT });
        }
        let (diff_id, len) = hashed.drain_and_finish().map_err(|source| LayerError::Decompress { digest, source })?;
        Ok((stats, diff_id, len))
    });

    let download = download(registry, job, opts, &tx).await;
    if download.is_err() {
        // Before the channel closes, so the unpacker reports "aborted", not EOF.
        aborted.store(true, Ordering::Release);
    }
    drop(tx);
    let unpacked =
        unpacker.await.map_err(|e| LayerError::Task { digest: job.blob_digest.clone(), reason: e.to_string() })?;
    // A download failure explains an unpack failure ("aborted"), not the reverse.
    let blob_size = download?;
    let (stats, diff_id, uncompressed) = unpacked?;
    if diff_id != job.diff_id {
        return Err(LayerError::DiffId {
            digest: job.blob_digest.clone(),
            expected: job.diff_id.clone(),
            actual: diff_id,
        });
    }
    let record = LayerRecord {
        chain_id: job.chain_id.clone(),
        diff_id,
        blob_digest: job.blob_digest.clone(),
        blob_size,
        unpacked_bytes: stats.bytes,
    };
    store.commit_verified(staging, &record)?;
    tracing::info!(
        layer = %job.blob_digest,
        compressed = blob_size,
        uncompressed,
        entries = stats.entries,
        seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        "layer verified and committed"
    );
    Ok(record)
}

/// Streams the blob into `tx`, hashing it; resumes on transport errors.
/// Returns the verified blob size.
async fn download(
    registry: &Registry,
    job: &LayerJob,
    opts: &PipelineOptions,
    tx: &mpsc::Sender<Bytes>,
) -> Result<u64, LayerError> {
    let digest = &job.blob_digest;
    let mut hasher = Hasher::default();
    // Sees exactly the bytes the hasher sees, in order (resume included).
    let mut decryptor = job.decryption.as_ref().map(|k| k.decryptor());
    let mut unpacker_gone = false;
    let mut attempts = 0u32;
    let mut last_error = String::new();
    'attempt: loop {
        // The whole blob arrived before the connection failed (a reset after
        // the last byte, a Content-Length longer than the blob): a resume would
        // ask for the empty range after it and get a 416. The digests decide.
        if attempts > 0 && hasher.len() == job.blob_size {
            break 'attempt;
        }
        if attempts > opts.max_retries {
            return Err(LayerError::RetriesExhausted { digest: digest.clone(), attempts, last: last_error });
        }
        if attempts > 0 {
            let backoff = opts.retry_backoff.saturating_mul(1 << attempts.min(6));
            tracing::warn!(layer = %digest, offset = hasher.len(), attempt = attempts, error = %last_error, "resuming layer download");
            tokio::time::sleep(backoff).await;
        }
        attempts += 1;
        let have = hasher.len();
        let mut rate = RateWindow::new(opts);
        let opened = rate.within(registry.open_blob(&job.source, digest, have)).await;
        let (mut resp, start) = match opened {
            Some(Ok(r)) => r,
            Some(Err(e @ RegistryError::Transport { .. })) => {
                last_error = e.to_string();
                continue;
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                last_error = rate.roll().err().unwrap_or_else(|| "no response".into());
                continue;
            }
        };
        // Bytes of this body we already hashed (registry ignored Range).
        let mut skip = have - start;
        let mut too_slow: Option<String> = None;
        loop {
            // (With the whole blob here, read on to the end instead of asking for an empty range.)
            if let Some(slow) = too_slow.take().filter(|_| hasher.len() < job.blob_size) {
                last_error = slow;
                continue 'attempt;
            }
            let chunk = match rate.within(resp.chunk()).await {
                Some(Ok(Some(c))) => c,
                // A body that ends short of the descriptor's size (a proxy's
                // wrong Content-Length) is resumed after what arrived.
                Some(Ok(None)) if hasher.len() < job.blob_size => {
                    last_error = format!("response ended at byte {} of {}", hasher.len(), job.blob_size);
                    continue 'attempt;
                }
                Some(Ok(None)) => break 'attempt,
                Some(Err(e)) => {
                    last_error = RegistryError::transport(resp.url().as_str(), e).to_string();
                    continue 'attempt;
                }
                None => {
                    if let Err(slow) = rate.roll() {
                        tracing::warn!(layer = %digest, offset = hasher.len(), error = %slow, "abandoning a slow layer download");
                        last_error = slow;
                        continue 'attempt;
                    }
                    continue;
                }
            };
            rate.bytes = rate.bytes.saturating_add(chunk.len() as u64);
            if let Err(slow) = rate.roll() {
                tracing::warn!(layer = %digest, offset = hasher.len(), error = %slow, "abandoning a slow layer download");
                // What arrived is good: use it, then resume after it.
                too_slow = Some(slow);
            }
            let mut chunk = chunk;
            if skip > 0 {
                let n = skip.min(chunk.len() as u64) as usize;
                let _ = chunk.split_to(n);
                skip -= n as u64;
                if chunk.is_empty() {
                    continue;
                }
            }
            if hasher.len() + chunk.len() as u64 > job.blob_size {
                return Err(LayerError::Oversized { digest: digest.clone(), size: job.blob_size });
            }
            hasher.update(&chunk);
            if let Some(d) = decryptor.as_mut() {
                let mut plain = bytes::BytesMut::from(&chunk[..]);
                d.update(&mut plain);
                chunk = plain.freeze();
            }
            let blocked = Instant::now();
            let sent = unpacker_gone || tx.send(chunk).await.is_ok();
            // Waiting for the unpacker is not the registry being slow.
            rate.pause(blocked.elapsed());
            if !sent {
                if decryptor.is_none() {
                    // The unpacker stopped (its error is the one to report).
                    return Ok(hasher.len());
                }
                // Encrypted: read on to check the HMAC, so tampering is
                // reported as such rather than as a decompression error.
                unpacker_gone = true;
            }
        }
    }
    let size = hasher.len();
    if size != job.blob_size {
        return Err(LayerError::BlobSize { digest: digest.clone(), size: job.blob_size, actual: size });
    }
    let actual = hasher.finish();
    if actual != *digest {
        return Err(LayerError::BlobDigest { digest: digest.clone(), actual });
    }
    if let Some(d) = decryptor {
        d.finish()?;
    }
    Ok(size)
}
