//! The order in which the dynamic linker looks symbols up in a process: the executable, the
//! LD_PRELOAD libraries, then the executable's DT_NEEDED libraries breadth first (each
//! library's own needs after its siblings'). The first mapped file in that order that defines
//! an allocator function is the one whose code runs when the program calls it. Files the
//! order does not reach (dlopen'd, or named in a way we cannot match) come last, highest
//! address first.

use object::{
    Endianness,
    elf::{DT_NEEDED, DT_SONAME},
    read::elf::ElfFile64,
};

/// What the order needs to know of one mapped file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Linkage {
    /// DT_SONAME, when it has one.
    pub(crate) soname: Option<String>,
    /// DT_NEEDED, in order.
    pub(crate) needed: Vec<String>,
}

impl Linkage {
    /// Reads a file's dynamic section (empty for a static or non-ELF file).
    pub(crate) fn of(data: &[u8]) -> Self {
        let Ok(file) = ElfFile64::<Endianness>::parse(data) else {
            return Self::default();
        };
        let endian = file.endian();
        let Ok(table) = file.elf_section_table().dynamic_table(endian, data) else {
            return Self::default();
        };
        let mut linkage = Self::default();
        for entry in &table {
            let string = || {
                table
                    .string(entry)
                    .ok()
                    .and_then(|name| std::str::from_utf8(name).ok())
                    .map(str::to_owned)
            };
            match entry.tag {
                DT_NEEDED => linkage.needed.extend(string()),
                DT_SONAME => linkage.soname = string(),
                _ => {}
            }
        }
        linkage
    }
}

/// One mapped file, as the ordering sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Path as the process sees it.
    pub(crate) path: String,
    /// Lowest address it is mapped at.
    pub(crate) start: u64,
    /// Its dynamic linkage.
    pub(crate) linkage: Linkage,
}

impl Candidate {
    /// Whether a DT_NEEDED or LD_PRELOAD entry names this file.
    fn is_named(&self, name: &str) -> bool {
        let base = |path: &str| path.rsplit('/').next().unwrap_or(path).to_owned();
        name == self.path
            || self.linkage.soname.as_deref() == Some(name)
            || base(name) == base(&self.path)
    }
}

/// Indices of `files` in symbol lookup order. `executable` is the process's executable path
/// (when known), `preload` its LD_PRELOAD value (when set).
pub(crate) fn order(
    files: &[Candidate],
    executable: Option<&str>,
    preload: Option<&str>,
) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::with_capacity(files.len());
    let add = |index: usize, order: &mut Vec<usize>| {
        if !order.contains(&index) {
            order.push(index);
        }
    };
    let find = |name: &str| files.iter().position(|file| file.is_named(name));
    let Some(root) = executable.and_then(|path| files.iter().position(|f| f.path == path)) else {
        return by_address(files, order);
    };
    add(root, &mut order);
    for name in preload
        .unwrap_or_default()
        .split([' ', ':'])
        .filter(|name| !name.is_empty())
    {
        if let Some(index) = find(name) {
            add(index, &mut order);
        }
    }
    // Breadth first over DT_NEEDED, from the executable and then from what was added.
    let mut next = 0;
    let mut queue = vec![root];
    queue.extend(order.iter().copied().filter(|&index| index != root));
    while next < queue.len() {
        let current = queue[next];
        next += 1;
        for name in &files[current].linkage.needed {
            if let Some(index) = find(name)
                && !order.contains(&index)
            {
                add(index, &mut order);
                queue.push(index);
            }
        }
    }
    by_address(files, order)
}

/// Appends the files not yet ordered, highest address first (the loader maps each library
/// below the previous one).
fn by_address(files: &[Candidate], mut order: Vec<usize>) -> Vec<usize> {
    let mut rest: Vec<usize> = (0..files.len()).filter(|i| !order.contains(i)).collect();
    rest.sort_by_key(|&index| std::cmp::Reverse(files[index].start));
    order.extend(rest);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, start: u64, soname: Option<&str>, needed: &[&str]) -> Candidate {
        Candidate {
            path: path.to_owned(),
            start,
            linkage: Linkage {
                soname: soname.map(str::to_owned),
                needed: needed.iter().map(|n| (*n).to_owned()).collect(),
            },
        }
    }

    #[test]
    fn preloads_come_before_needed_libraries_whatever_their_addresses() {
        // Addresses as seen with LD_PRELOAD=libjemalloc.so.2: libgcc_s (jemalloc's own need)
        // above jemalloc, libc below it.
        let files = [
            file(
                "/app/server",
                0x5590_0000_0000,
                None,
                &["libstdc++.so.6", "libc.so.6"],
            ),
            file(
                "/lib/libstdc++.so.6.0.30",
                0x7f9a_6d09_9000,
                Some("libstdc++.so.6"),
                &["libc.so.6", "libgcc_s.so.1"],
            ),
            file(
                "/lib/libc.so.6",
                0x7f9a_6d44_4000,
                Some("libc.so.6"),
                &["ld-linux-x86-64.so.2"],
            ),
            file(
                "/lib/libjemalloc.so.2",
                0x7f9a_6d60_9000,
                Some("libjemalloc.so.2"),
                &["libgcc_s.so.1", "libc.so.6"],
            ),
            file(
                "/lib/libgcc_s.so.1",
                0x7f9a_6d9a_a000,
                Some("libgcc_s.so.1"),
                &["libc.so.6"],
            ),
            file(
                "/lib64/ld-linux-x86-64.so.2",
                0x7f9a_6d9d_b000,
                Some("ld-linux-x86-64.so.2"),
                &[],
            ),
        ];
        let paths: Vec<&str> = order(
            &files,
            Some("/app/server"),
            Some("/usr/lib/libjemalloc.so.2"),
        )
        .into_iter()
        .map(|i| files[i].path.as_str())
        .collect();
        assert_eq!(
            paths,
            [
                "/app/server",
                "/lib/libjemalloc.so.2",
                "/lib/libstdc++.so.6.0.30",
                "/lib/libc.so.6",
                "/lib/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }

    #[test]
    fn an_unknown_executable_falls_back_to_address_order() {
        let files = [
            file("/lib/libc.so.6", 0x7f00, None, &[]),
            file("/lib/libjemalloc.so.2", 0x7f80, None, &[]),
        ];
        assert_eq!(order(&files, None, None), [1, 0]);
    }

    #[test]
    fn a_real_executable_lists_its_needed_libraries() {
        let data = std::fs::read("/proc/self/exe").expect("read own executable");
        let linkage = Linkage::of(&data);
        assert!(
            linkage.needed.iter().any(|n| n.starts_with("libc.so")),
            "{linkage:?}"
        );
    }
}
