//! Media types by file extension.

/// The `Content-Type` for a path, from its extension; text types say
/// UTF-8. Unknown extensions are `application/octet-stream`.
pub fn mime_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = match name.rfind('.') {
        Some(i) if i + 1 < name.len() => &name[i + 1..],
        _ => return "application/octet-stream",
    };
    let mut lower = [0u8; 8];
    if ext.len() > lower.len() {
        return "application/octet-stream";
    }
    for (d, s) in lower.iter_mut().zip(ext.bytes()) {
        *d = s.to_ascii_lowercase();
    }
    match &lower[..ext.len()] {
        b"html" | b"htm" => "text/html; charset=utf-8",
        b"css" => "text/css; charset=utf-8",
        b"js" | b"mjs" => "text/javascript; charset=utf-8",
        b"json" | b"map" => "application/json",
        b"txt" | b"text" => "text/plain; charset=utf-8",
        b"md" => "text/markdown; charset=utf-8",
        b"csv" => "text/csv; charset=utf-8",
        b"xml" => "application/xml",
        b"atom" => "application/atom+xml",
        b"rss" => "application/rss+xml",
        b"svg" => "image/svg+xml",
        b"png" => "image/png",
        b"jpg" | b"jpeg" => "image/jpeg",
        b"gif" => "image/gif",
        b"webp" => "image/webp",
        b"avif" => "image/avif",
        b"ico" => "image/x-icon",
        b"wasm" => "application/wasm",
        b"pdf" => "application/pdf",
        b"woff" => "font/woff",
        b"woff2" => "font/woff2",
        b"ttf" => "font/ttf",
        b"otf" => "font/otf",
        b"mp4" => "video/mp4",
        b"webm" => "video/webm",
        b"mp3" => "audio/mpeg",
        b"ogg" => "audio/ogg",
        b"wav" => "audio/wav",
        b"zip" => "application/zip",
        b"gz" => "application/gzip",
        b"tar" => "application/x-tar",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::mime_type;

    #[test]
    fn by_extension() {
        assert_eq!(mime_type("/index.html"), "text/html; charset=utf-8");
        assert_eq!(mime_type("/a.b/STYLE.CSS"), "text/css; charset=utf-8");
        assert_eq!(mime_type("/img/x.png"), "image/png");
        assert_eq!(mime_type("/Makefile"), "application/octet-stream");
        assert_eq!(mime_type("/dir.d/noext"), "application/octet-stream");
        assert_eq!(mime_type("/trailing."), "application/octet-stream");
        assert_eq!(mime_type("/x.verylongextension"), "application/octet-stream");
    }
}
