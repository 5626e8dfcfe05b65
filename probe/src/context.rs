//! What every mode's checks share during one probe run: the roots, the kernel release,
//! the subprocess time bound, the module snapshot and the (lazily created) namespace the
//! programming checks run in. Also [`Findings`], the builder of a [`ModeReport`].

use std::{cell::OnceCell, time::Duration};

use switchyard_crd::Mode;

use crate::{
    kernel_module::KernelModules,
    netns::Netns,
    report::{Check, ModeReport, NotLoaded},
    roots::ProbeRoots,
};

pub(crate) struct Context {
    pub roots: ProbeRoots,
    pub release: String,
    pub timeout: Duration,
    /// Set: the IPVS checks first load the IPVS modules with this scheduler.
    pub load_ipvs_scheduler: Option<String>,
    netns_name: Option<String>,
    netns: OnceCell<Result<Netns, String>>,
    modules: OnceCell<KernelModules>,
}

impl Context {
    pub fn new(
        roots: ProbeRoots,
        release: String,
        timeout: Duration,
        netns_name: Option<String>,
    ) -> Self {
        Context {
            roots,
            release,
            timeout,
            load_ipvs_scheduler: None,
            netns_name,
            netns: OnceCell::new(),
            modules: OnceCell::new(),
        }
    }

    /// The namespace to program test state in: the caller's, or a throwaway one created on
    /// first use and deleted when the context drops.
    pub fn netns(&self) -> Result<&Netns, String> {
        self.netns
            .get_or_init(|| {
                match &self.netns_name {
                    Some(name) => Netns::existing(name, self.timeout),
                    None => Netns::throwaway(self.timeout),
                }
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    pub fn modules(&self) -> &KernelModules {
        self.modules
            .get_or_init(|| KernelModules::read(&self.roots, &self.release))
    }
}

/// Collects checks, missing names and notes for one mode.
#[derive(Default)]
pub(crate) struct Findings {
    checks: Vec<Check>,
    missing: Vec<String>,
    not_loaded: Vec<NotLoaded>,
    notes: Vec<String>,
}

impl Findings {
    pub fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.checks.push(Check::new(name, true, detail));
    }

    /// A failed check, naming what is missing because of it.
    pub fn fail<I, S>(&mut self, name: &str, detail: impl Into<String>, missing: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.checks.push(Check::new(name, false, detail));
        self.missing.extend(missing.into_iter().map(Into::into));
    }

    /// A failed check whose cause is kernel module `module`: present for this kernel but
    /// not loaded (`load_error`: modprobe's error, when loading was tried).
    pub fn fail_not_loaded(
        &mut self,
        name: &str,
        detail: impl Into<String>,
        module: &str,
        load_error: Option<String>,
    ) {
        self.checks.push(Check::new(name, false, detail));
        if !self.not_loaded.iter().any(|n| n.module == module) {
            self.not_loaded.push(NotLoaded {
                module: module.to_string(),
                load_error,
            });
        }
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn finish(self, mode: Mode) -> ModeReport {
        ModeReport::new(mode, self.checks, self.missing, self.notes)
            .with_not_loaded(self.not_loaded)
    }
}
