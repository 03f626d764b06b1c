//! `loadgen wake [--threads N] [--futex-buckets N] [--one-cpu]`: what waking
//! a parked thread costs on this machine, with no socket in the way. N
//! threads (10,000 by default; 128 KiB stacks, nice 19, as ssehub's stream
//! threads) each park on a crossbeam queue; one thread at normal priority
//! sends an item to every queue, 20 times, 100 ms apart, and each woken
//! thread takes its item and parks again. Prints the sender's CPU per send
//! (the wake-up) and the woken threads' CPU per item taken. `--futex-buckets`
//! sizes the process's futex hash as ssehub does (without it, as the kernel
//! does; a power of two); `--one-cpu` keeps every thread on CPU 0 (no
//! wake-up crosses CPUs). The threads park through `Select` at once, where
//! ssehub's spin and yield a little first (crossbeam's `recv_timeout`); the
//! woken threads' figure includes the main thread's polling for them, a
//! few percent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Select, Sender};

const ROUNDS: u32 = 20;

/// CPU seconds of this process (`RUSAGE_SELF`) or this thread.
fn cpu_s(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes into a struct we own.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut u);
        u
    };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn park_on(rx: crossbeam_channel::Receiver<u64>, taken: &AtomicU64) {
    // SAFETY: as ssehub's stream threads: this thread to nice 19.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
    loop {
        let mut select = Select::new();
        select.recv(&rx);
        let Ok(op) = select.select_timeout(Duration::from_secs(30)) else {
            continue;
        };
        if op.recv(&rx).is_err() {
            return;
        }
        taken.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn run(args: &[String]) {
    let mut threads = 10_000usize;
    let mut buckets: Option<u64> = None;
    let mut one_cpu = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut number = || {
            it.next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| crate::usage())
        };
        match a.as_str() {
            "--threads" => threads = number() as usize,
            "--futex-buckets" => {
                let b: u64 = number();
                if !b.is_power_of_two() {
                    crate::usage();
                }
                buckets = Some(b);
            }
            "--one-cpu" => one_cpu = true,
            _ => crate::usage(),
        }
    }
    if let Some(b) = buckets {
        const PR_FUTEX_HASH: libc::c_int = 78;
        const PR_FUTEX_HASH_SET_SLOTS: libc::c_ulong = 1;
        // SAFETY: prctl with integer arguments only.
        let set = unsafe {
            libc::prctl(
                PR_FUTEX_HASH,
                PR_FUTEX_HASH_SET_SLOTS,
                b as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if set != 0 {
            eprintln!("loadgen: this kernel has no per-process futex hash to size");
        }
    }
    if one_cpu {
        // SAFETY: a cpu_set_t we own, applied to this process before it
        // starts its threads (they inherit it).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    let taken = Arc::new(AtomicU64::new(0));
    let queues: Vec<Sender<u64>> = (0..threads)
        .map(|_| {
            let (tx, rx) = crossbeam_channel::unbounded();
            let taken = taken.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || park_on(rx, &taken))
                .expect("start a thread");
            tx
        })
        .collect();
    // Every thread parked.
    std::thread::sleep(Duration::from_secs(1));
    let all0 = cpu_s(libc::RUSAGE_SELF);
    let mut sending = 0.0;
    for round in 1..=ROUNDS {
        let own0 = cpu_s(libc::RUSAGE_THREAD);
        for q in &queues {
            q.send(u64::from(round)).expect("a parked thread");
        }
        sending += cpu_s(libc::RUSAGE_THREAD) - own0;
        let target = u64::from(round) * threads as u64;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while taken.load(Ordering::Relaxed) < target && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = cpu_s(libc::RUSAGE_SELF) - all0;
    let sends = f64::from(ROUNDS) * threads as f64;
    println!(
        "{threads} parked threads, futex hash {}{}: sender {:.2} µs of CPU per wake-up, woken threads {:.2} µs per item",
        buckets.map_or("as the kernel sizes it".into(), |b| format!("of {b} buckets")),
        if one_cpu { ", all on CPU 0" } else { "" },
        sending / sends * 1e6,
        (all - sending) / sends * 1e6,
    );
    drop(queues);
}
