//! The check a library gets before `dlopen`. The dynamic loader maps each loadable segment
//! straight from the file; a segment that ends past the end of the file (a truncated copy, an
//! interrupted download or build) is mapped anyway, and the first touch of its missing pages
//! kills the process with `SIGBUS` inside `dlopen`, before any error can be returned. So every
//! range the loader will read is checked against the file's length first, with the `object`
//! crate's ELF reader (which never trusts an offset it has not bounds-checked).
//!
//! Files that are not ELF at all are left to `dlopen`, which refuses them with its own message.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::{FileKind, ReadRef};

/// Why a library cannot be mapped safely: one clause, for
/// [`LoadError::Truncated`](super::LoadError::Truncated).
pub fn check(bytes: &[u8]) -> Result<(), String> {
    match FileKind::parse(bytes) {
        Ok(FileKind::Elf64) => check_elf::<elf::FileHeader64<object::Endianness>>(bytes),
        Ok(FileKind::Elf32) => check_elf::<elf::FileHeader32<object::Endianness>>(bytes),
        // Not ELF (or not even 16 bytes of anything): dlopen says what it is.
        _ if !bytes.starts_with(&elf::ELFMAG) => Ok(()),
        _ => Err(format!(
            "{} bytes, not even a whole ELF header",
            bytes.len()
        )),
    }
}

fn check_elf<Elf: FileHeader<Endian = object::Endianness>>(bytes: &[u8]) -> Result<(), String> {
    let len = bytes.len() as u64;
    let header =
        Elf::parse(bytes).map_err(|_| format!("{len} bytes, not even a whole ELF header"))?;
    let endian = header
        .endian()
        .map_err(|_| "an ELF header of unknown byte order".to_owned())?;
    let segments = header
        .program_headers(endian, bytes)
        .map_err(|_| format!("its program headers end past the end of the file ({len} bytes)"))?;
    if segments.is_empty() {
        return Err("an ELF file with no program headers: not a shared library".into());
    }
    for (index, segment) in segments.iter().enumerate() {
        let kind = segment.p_type(endian);
        if !matches!(
            kind,
            elf::PT_LOAD | elf::PT_DYNAMIC | elf::PT_INTERP | elf::PT_NOTE
        ) {
            continue;
        }
        let offset: u64 = segment.p_offset(endian).into();
        let size: u64 = segment.p_filesz(endian).into();
        let inside = offset
            .checked_add(size)
            .is_some_and(|end| bytes.read_bytes_at(offset, size).is_ok() && end <= len);
        if !inside {
            let what = match kind {
                elf::PT_LOAD => "loadable segment",
                elf::PT_DYNAMIC => "dynamic section",
                elf::PT_INTERP => "interpreter path",
                _ => "note segment",
            };
            return Err(format!(
                "its {what} (program header {index}) covers bytes {offset}..{} but the file has {len}",
                offset.saturating_add(size)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary is itself an ELF file the loader could map.
    fn this_binary() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn a_whole_library_passes_and_every_truncation_of_it_is_refused() {
        let whole = this_binary();
        assert_eq!(check(&whole), Ok(()));
        for cut in [0x10, 0x30, 0x40, 200, 4096, 12_000] {
            let err = check(&whole[..cut]).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(
            check(&whole[..4096])
                .unwrap_err()
                .contains("but the file has 4096")
        );
        // What the loader never maps (section headers, debug info) may be missing.
        let header = elf::FileHeader64::<object::Endianness>::parse(&*whole).unwrap();
        let endian = header.endian().unwrap();
        let mapped = header
            .program_headers(endian, &*whole)
            .unwrap()
            .iter()
            .filter(|s| s.p_type(endian) == elf::PT_LOAD)
            .map(|s| s.p_offset(endian) + s.p_filesz(endian))
            .max()
            .unwrap() as usize;
        assert_eq!(check(&whole[..mapped]), Ok(()));
        assert!(check(&whole[..mapped - 1]).is_err());
    }

    #[test]
    fn files_that_are_not_elf_are_left_to_dlopen() {
        assert_eq!(check(b"not an ELF file"), Ok(()));
        assert_eq!(check(b""), Ok(()));
        assert!(check(b"\x7fELF").is_err());
    }
}
