//! A bundle as a gzip-compressed tar archive, to unpack with `tar -xzf bundle -C /`.

use std::io::Write as _;

use flate2::Compression;
use flate2::write::GzEncoder;
use plinth_domain::bootstrap::Bundle;

/// The archive: directories (0755) then files with their modes, owned by root, paths relative
/// to `/`.
pub fn tar_gz(bundle: &Bundle) -> std::io::Result<Vec<u8>> {
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        header.set_size(size);
        header
    };
    for dir in bundle.directories() {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        builder.append_data(
            &mut h,
            format!("{}/", dir.trim_start_matches('/')),
            std::io::empty(),
        )?;
    }
    for file in &bundle.files {
        let contents = file.contents.expose().as_bytes();
        let mut h = header(tar::EntryType::Regular, file.mode, contents.len() as u64);
        builder.append_data(&mut h, file.path.trim_start_matches('/'), contents)?;
    }
    let mut gz = builder.into_inner()?;
    gz.flush()?;
    gz.finish()
}
