//! The resolver's configuration: which files it is read from, the resolver made from them, and
//! the hosts-file table and `nsswitch.conf` routing the hooks answer from.
//!
//! Read once per resolver, when a scheduler makes its first one (or `set_nameservers` makes
//! one): later changes of the files or of the variables below reach the next scheduler, not a
//! running one.
//!
//! - `EVCO_RESOLV_CONF` names a file in `resolv.conf(5)` syntax read instead of
//!   `/etc/resolv.conf`: `nameserver` (an address, with an optional port:
//!   `nameserver 127.0.0.1:5353`, `nameserver [::1]:5353`), `search`, `domain` and `options`
//!   (`ndots`, `timeout`, `attempts`, and evdns's own, e.g. `max-inflight`). A missing or empty
//!   file leaves the defaults glibc uses too: the name server on 127.0.0.1 and the host name's
//!   domain as the search list; hosts-file names and `localhost` resolve all the same.
//! - `EVCO_HOSTS` names a file in `hosts(5)` syntax read instead of `/etc/hosts`.
//! - `EVCO_NSSWITCH` names a file in `nsswitch.conf(5)` syntax read instead of
//!   `/etc/nsswitch.conf`; only its `hosts:` line matters (see [`Conf::files_and_dns_only`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CString, OsString, c_int};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;

use crate::scheduler::Scheduler;
use crate::sys;

/// evdns's `DNS_OPTION_SEARCH | DNS_OPTION_NAMESERVERS | DNS_OPTION_MISC`: everything of a
/// resolv.conf file but the hosts file, which [`new_resolver`] loads from its own path.
const RESOLV_CONF_OPTIONS: c_int = 1 | 2 | 4;

/// Requests evdns keeps in flight at once before it queues more (evdns's own default is 64:
/// fifty coroutines resolving a name, an A and an AAAA query each, would wait for one another).
/// A resolv.conf `options max-inflight:N` line overrides it.
const MAX_INFLIGHT: &std::ffi::CStr = c"1024";

/// The file named by `var`, or `default`.
fn path(var: &str, default: &str) -> OsString {
    std::env::var_os(var).unwrap_or_else(|| default.into())
}

/// The resolv.conf file lookups read (`EVCO_RESOLV_CONF`, or `/etc/resolv.conf`).
fn resolv_conf_path() -> OsString {
    path("EVCO_RESOLV_CONF", "/etc/resolv.conf")
}

/// The hosts file lookups read (`EVCO_HOSTS`, or `/etc/hosts`).
fn hosts_path() -> OsString {
    path("EVCO_HOSTS", "/etc/hosts")
}

/// A configuration file's text, empty when it cannot be read. Bytes that are not UTF-8 (a
/// Latin-1 comment, say) become U+FFFD: the rest of the file still counts, as it does for
/// glibc, which reads these files as bytes.
fn read_text(p: OsString) -> String {
    std::fs::read(p)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn c_path(p: OsString) -> io::Result<CString> {
    use std::os::unix::ffi::OsStringExt;
    CString::new(p.into_vec())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file name contains a NUL"))
}

/// Makes a resolver on `sched`'s base, with the hosts file loaded and, unless `servers` are
/// given (which the caller adds), the name servers, search list and options of the resolv.conf
/// file; and reads this thread's [`Conf`] anew.
pub(super) fn new_resolver(
    sched: &Scheduler,
    servers: Option<&[SocketAddr]>,
) -> io::Result<*mut sys::evdns_base> {
    // Not EVDNS_BASE_INITIALIZE_NAMESERVERS: with it, a missing or empty /etc/resolv.conf made
    // evdns_base_new fail, and even hosts-file names could not be resolved.
    // SAFETY: the scheduler's base is live; the resolver is freed only with it, or never (see
    // the lifecycle invariants in `net::dns`).
    let dns = unsafe {
        sys::evdns_base_new(
            sched.base().as_raw(),
            sys::EVDNS_BASE_DISABLE_WHEN_INACTIVE as c_int,
        )
    };
    if dns.is_null() {
        return Err(io::Error::other("evdns_base_new failed"));
    }
    // SAFETY: `dns` is live; both strings are NUL-terminated and only read.
    unsafe { sys::evdns_base_set_option(dns, c"max-inflight:".as_ptr(), MAX_INFLIGHT.as_ptr()) };
    let conf = match servers {
        Some(given) => Conf::read(given.to_vec(), Search::none()),
        None => {
            let text = read_text(resolv_conf_path());
            Conf::read(servers_of(&text), Search::of(&text))
        }
    };
    if servers.is_none() {
        let file = c_path(resolv_conf_path())?;
        // SAFETY: `dns` is live, `file` a NUL-terminated path. Its result only says which
        // defaults evdns took (a missing file: name server 127.0.0.1, as glibc's).
        unsafe { sys::evdns_base_resolv_conf_parse(dns, RESOLV_CONF_OPTIONS, file.as_ptr()) };
    }
    let hosts = c_path(hosts_path())?;
    // SAFETY: `dns` is live, `hosts` a NUL-terminated path; a missing file loads nothing.
    unsafe { sys::evdns_base_load_hosts(dns, hosts.as_ptr()) };
    CONF.with(|c| *c.borrow_mut() = Some(Rc::new(conf)));
    Ok(dns)
}

thread_local! {
    /// The configuration read with this thread's current resolver.
    static CONF: RefCell<Option<Rc<Conf>>> = const { RefCell::new(None) };
}

/// What the hooks answer from besides the name servers (read with the resolver).
#[derive(Debug)]
pub(crate) struct Conf {
    hosts: Hosts,
    // Read by the hooks only.
    #[cfg_attr(not(all(feature = "hook", target_os = "linux")), allow(dead_code))]
    files_and_dns_only: bool,
    #[cfg_attr(not(all(feature = "hook", target_os = "linux")), allow(dead_code))]
    servers: Vec<SocketAddr>,
    #[cfg_attr(not(all(feature = "hook", target_os = "linux")), allow(dead_code))]
    search: Search,
}

impl Conf {
    fn read(servers: Vec<SocketAddr>, search: Search) -> Conf {
        let hosts = read_text(hosts_path());
        let nsswitch = path("EVCO_NSSWITCH", "/etc/nsswitch.conf");
        let nsswitch = read_text(nsswitch);
        Conf {
            hosts: Hosts::parse(&hosts),
            files_and_dns_only: hosts_sources(&nsswitch)
                .iter()
                .all(|s| *s == "files" || *s == "dns"),
            servers,
            search,
        }
    }

    /// The names to ask the name servers for `name`, in order, as glibc's `res_search` tries
    /// them: the name as given first when it has at least `ndots` dots, else last; each search
    /// domain appended to it; only the name when it ends with the root's dot. (The hooks ask
    /// each one themselves: evdns's own search moves to the next name on any error, a
    /// truncated answer's included, and so never reports the truncation.)
    #[cfg_attr(not(all(feature = "hook", target_os = "linux")), allow(dead_code))]
    pub(crate) fn candidates(&self, name: &str) -> Vec<String> {
        if name.ends_with('.') {
            return vec![name.to_string()];
        }
        let searched = self.search.domains.iter().map(|d| format!("{name}.{d}"));
        if name.matches('.').count() >= self.search.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }

    /// The name servers, in order of preference (those of the resolv.conf file, or the ones
    /// `set_nameservers` gave; 127.0.0.1:53 when the file names none, as glibc's default).
    #[cfg_attr(not(all(feature = "hook", target_os = "linux")), allow(dead_code))]
    pub(crate) fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// This thread's configuration, read with its scheduler's resolver (made first if the
    /// scheduler has none yet).
    pub(crate) fn current(sched: &Scheduler) -> io::Result<Rc<Conf>> {
        super::resolver(sched)?;
        if let Some(c) = CONF.with(|c| c.borrow().clone()) {
            return Ok(c);
        }
        // Every resolver made sets it (`new_resolver`); were one ever made another way, the
        // files are read now.
        let text = read_text(resolv_conf_path());
        let c = Rc::new(Conf::read(servers_of(&text), Search::of(&text)));
        CONF.with(|slot| *slot.borrow_mut() = Some(c.clone()));
        Ok(c)
    }

    /// Whether the `hosts:` line of nsswitch.conf names only `files` and `dns` (or there is no
    /// such line: glibc's default is `dns files`): then the hooks answer from the hosts file and
    /// evdns; other sources (`myhostname`, `mdns4_minimal`, `resolve`, `ldap`, ...) need
    /// glibc's own lookup, which the hooks run on a thread pool.
    #[cfg_attr(not(all(feature = "hook", target_os = "linux")), allow(dead_code))]
    pub(crate) fn files_and_dns_only(&self) -> bool {
        self.files_and_dns_only
    }

    /// The answer that needs no name server: `name`'s hosts-file entries of the wanted
    /// families (the first name on its first line is the canonical one), else for `localhost`
    /// and `*.localhost` (RFC 6761) the loopback addresses, which never go to the network.
    pub(crate) fn local_answer(
        &self,
        name: &str,
        v4: bool,
        v6: bool,
    ) -> Option<(String, Vec<IpAddr>)> {
        if let Some(found) = self.hosts.find(name, v4, v6) {
            return Some(found);
        }
        if !is_localhost(name) {
            return None;
        }
        let mut addrs = Vec::new();
        if v4 {
            addrs.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        if v6 {
            addrs.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        }
        Some((name.to_string(), addrs))
    }
}

/// The `nameserver` lines of a resolv.conf file (an address, with an optional port); glibc's
/// default, 127.0.0.1:53, when there is none.
fn servers_of(resolv_conf: &str) -> Vec<SocketAddr> {
    let mut servers: Vec<SocketAddr> = resolv_conf
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let word = rest.split_whitespace().next()?;
            word.parse::<SocketAddr>().ok().or_else(|| {
                word.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            })
        })
        .collect();
    if servers.is_empty() {
        servers.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
    }
    servers
}

/// A resolv.conf file's search list and `ndots`.
#[derive(Debug)]
struct Search {
    domains: Vec<String>,
    ndots: usize,
}

impl Search {
    /// No search domains (`set_nameservers`'s resolvers).
    fn none() -> Search {
        Search {
            domains: Vec::new(),
            ndots: 1,
        }
    }

    /// The last `search` or `domain` line's domains (the host name's domain when there is
    /// none, as glibc and evdns take it) and `options ndots:N` (1 by default, at most 15).
    fn of(resolv_conf: &str) -> Search {
        let mut search = Search::none();
        let mut listed = false;
        for line in resolv_conf.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("search") => {
                    search.domains = words.map(|d| d.trim_end_matches('.').to_string()).collect();
                    listed = true;
                }
                Some("domain") => {
                    search.domains = words
                        .next()
                        .map(|d| d.trim_end_matches('.').to_string())
                        .into_iter()
                        .collect();
                    listed = true;
                }
                Some("options") => {
                    for n in words.filter_map(|o| o.strip_prefix("ndots:")) {
                        if let Ok(n) = n.parse::<usize>() {
                            search.ndots = n.min(15);
                        }
                    }
                }
                _ => {}
            }
        }
        search.domains.retain(|d| !d.is_empty());
        if !listed {
            search.domains = host_domain().into_iter().collect();
        }
        search
    }
}

/// The domain of this host's name (what follows its first dot), if it has one.
fn host_domain() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let name = std::ffi::CStr::from_bytes_until_nul(&buf)
        .ok()?
        .to_str()
        .ok()?;
    let (_, domain) = name.split_once('.')?;
    (!domain.is_empty()).then(|| domain.trim_end_matches('.').to_string())
}

/// `localhost`, `*.localhost`, with or without the root's trailing dot, in any case.
pub(crate) fn is_localhost(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
    let Some(split) = name.len().checked_sub(b"localhost".len()) else {
        return false;
    };
    let (head, tail) = name.split_at(split);
    tail.eq_ignore_ascii_case(b"localhost") && (head.is_empty() || head.ends_with(b"."))
}

/// The sources of nsswitch.conf's `hosts:` line (actions in brackets left out); empty when it
/// has none.
fn hosts_sources(nsswitch: &str) -> Vec<&str> {
    let Some(line) = nsswitch.lines().find_map(|l| {
        let l = l.split('#').next().unwrap_or("").trim_start();
        l.strip_prefix("hosts:")
    }) else {
        return Vec::new();
    };
    let mut sources = Vec::new();
    let mut in_action = false;
    for word in line.split_whitespace() {
        if word.starts_with('[') {
            in_action = true;
        }
        if !in_action {
            sources.push(word);
        }
        if word.ends_with(']') {
            in_action = false;
        }
    }
    sources
}

/// A hosts file: its lines' addresses and canonical names, and the lines each name is on.
#[derive(Debug, Default)]
struct Hosts {
    lines: Vec<(IpAddr, String)>,
    by_name: HashMap<String, Vec<usize>>,
}

impl Hosts {
    fn parse(text: &str) -> Hosts {
        let mut hosts = Hosts::default();
        for line in text.lines() {
            let mut words = line.split('#').next().unwrap_or("").split_whitespace();
            let Some(addr) = words.next().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let names: Vec<&str> = words.collect();
            let Some(canonical) = names.first() else {
                continue;
            };
            let index = hosts.lines.len();
            hosts.lines.push((addr, canonical.to_string()));
            for name in names {
                let entry = hosts.by_name.entry(name.to_ascii_lowercase()).or_default();
                if entry.last() != Some(&index) {
                    entry.push(index);
                }
            }
        }
        hosts
    }

    /// `name`'s addresses of the wanted families in file order, with the canonical name of the
    /// first line that has one; `None` when there is none.
    fn find(&self, name: &str, v4: bool, v6: bool) -> Option<(String, Vec<IpAddr>)> {
        // Keys are lower case: most names asked are already.
        let lines = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_name.get(&name.to_ascii_lowercase())
        } else {
            self.by_name.get(name)
        }?;
        let mut canonical = None;
        let mut addrs = Vec::new();
        for &i in lines {
            let (addr, canon) = &self.lines[i];
            if (addr.is_ipv4() && v4) || (addr.is_ipv6() && v6) {
                canonical.get_or_insert(canon);
                if !addrs.contains(addr) {
                    addrs.push(*addr);
                }
            }
        }
        Some((canonical?.clone(), addrs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_hosts_sources_skip_actions_and_comments() {
        let conf =
            "# hosts: ldap\npasswd: files\nhosts:  files [NOTFOUND=return] myhostname dns # x\n";
        assert_eq!(hosts_sources(conf), ["files", "myhostname", "dns"]);
        assert!(hosts_sources("passwd: files\n").is_empty());
    }

    #[test]
    fn dns_hosts_file_lines_give_addresses_in_order_and_the_first_canonical_name() {
        let hosts = Hosts::parse(
            "127.0.0.1 localhost\n# 10.0.0.1 db\n10.0.0.2 db.internal db # main\n\
             fd00::2 db.internal db\nbogus line\n10.0.0.3 DB\n",
        );
        let (canon, addrs) = hosts.find("db", true, true).unwrap();
        assert_eq!(canon, "db.internal");
        let want: Vec<IpAddr> = ["10.0.0.2", "fd00::2", "10.0.0.3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(addrs, want);
        assert_eq!(hosts.find("db", true, false).unwrap().1.len(), 2);
        assert!(hosts.find("localhost", false, true).is_none());
        assert!(hosts.find("10.0.0.1", true, true).is_none());
    }

    #[test]
    fn dns_nameserver_lines_may_carry_a_port() {
        let conf =
            "search x\nnameserver 127.0.0.1:5353\nnameserver ::1\n nameserver [::1]:54 # c\n";
        let want: Vec<SocketAddr> = ["127.0.0.1:5353", "[::1]:53", "[::1]:54"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(servers_of(conf), want);
        assert_eq!(
            servers_of(""),
            ["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn dns_localhost_names_are_answered_without_the_hosts_file() {
        let conf = Conf {
            hosts: Hosts::default(),
            files_and_dns_only: true,
            servers: Vec::new(),
            search: Search::none(),
        };
        for name in ["localhost", "LocalHost.", "a.b.localhost"] {
            let (_, addrs) = conf.local_answer(name, true, false).unwrap();
            assert_eq!(addrs, [IpAddr::V4(Ipv4Addr::LOCALHOST)], "{name}");
        }
        assert!(conf.local_answer("localhost.example", true, true).is_none());
        assert!(conf.local_answer("notlocalhost", true, true).is_none());
    }

    #[test]
    fn dns_search_candidates_come_in_res_search_order() {
        let search = Search::of("domain old.test\nsearch a.test b.test. ; c\noptions ndots:2\n");
        assert_eq!(search.domains, ["a.test", "b.test"]);
        let conf = Conf {
            hosts: Hosts::default(),
            files_and_dns_only: true,
            servers: Vec::new(),
            search,
        };
        assert_eq!(conf.candidates("x.y"), ["x.y.a.test", "x.y.b.test", "x.y"]);
        assert_eq!(
            conf.candidates("x.y.z"),
            ["x.y.z", "x.y.z.a.test", "x.y.z.b.test"]
        );
        assert_eq!(conf.candidates("x."), ["x."]);
        assert_eq!(Search::of("options ndots:99").ndots, 15);
    }
}
