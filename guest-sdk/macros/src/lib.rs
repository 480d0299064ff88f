//! Procedural macros behind [`sprout-guest`](https://docs.rs/sprout-guest): `#[task]` and
//! `export_tasks!`.
//!
//! Do not depend on this crate directly: use the re-exports `sprout_guest::task` and
//! `sprout_guest::export_tasks!`, whose expansions refer to `::sprout_guest`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, LitStr, Pat, Path, ReturnType, Token, Type};

/// Turns a function into a Sprout task; see `sprout_guest::task` for the documentation.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item2: TokenStream2 = item.clone().into();
    match expand_task(attr.into(), item2.clone()) {
        Ok(tokens) => tokens.into(),
        // Keep the function itself so a mistake in the attribute does not also produce a
        // cascade of "cannot find function" errors.
        Err(err) => {
            let err = err.to_compile_error();
            quote!(#item2 #err).into()
        }
    }
}

/// Exports tasks from the task file; see `sprout_guest::export_tasks!` for the documentation.
#[proc_macro]
pub fn export_tasks(input: TokenStream) -> TokenStream {
    match expand_export(input.into()) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// The name of the hidden constant `#[task]` generates beside function `ident`.
fn task_const(ident: &Ident) -> Ident {
    let mut name = format_ident!("__sprout_task_{}", ident.unraw());
    name.set_span(ident.span());
    name
}

/// Whether `ty` is spelled `Option<…>` (or `std::option::Option<…>`): such parameters may be
/// omitted by the caller.
fn is_option(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|seg| seg.ident == "Option" && !seg.arguments.is_empty()),
        Type::Group(g) => is_option(&g.elem),
        Type::Paren(p) => is_option(&p.elem),
        _ => false,
    }
}

fn expand_task(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let func: ItemFn = syn::parse2(item)?;

    let mut name: Option<LitStr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            if lit.value().trim().is_empty() {
                return Err(syn::Error::new(
                    lit.span(),
                    "the task name must not be empty",
                ));
            }
            name = Some(lit);
            Ok(())
        } else {
            Err(meta.error("unknown #[task] option; the only option is `name = \"...\"`"))
        }
    });
    parser.parse2(attr)?;

    let sig = &func.sig;
    if let Some(t) = &sig.asyncness {
        return Err(syn::Error::new(
            t.span(),
            "a task cannot be `async`: write it in blocking style (the host suspends the \
             guest while it waits on WASI clocks and I/O)",
        ));
    }
    if let Some(t) = &sig.unsafety {
        return Err(syn::Error::new(t.span(), "a task cannot be `unsafe fn`"));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new(
            abi.span(),
            "a task cannot have an `extern` ABI",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a task cannot be generic: its parameter and return types must be concrete",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(v.span(), "a task cannot be variadic"));
    }

    let fn_ident = &sig.ident;
    let task_name =
        name.unwrap_or_else(|| LitStr::new(&fn_ident.unraw().to_string(), fn_ident.span()));

    let mut params = Vec::new();
    let mut lets = Vec::new();
    let mut call_args = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        let pat_ty = match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "a task is a free function: it cannot take `self`",
                ));
            }
            FnArg::Typed(pt) => pt,
        };
        let ident = match &*pat_ty.pat {
            Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => &pi.ident,
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "task parameters must be plain names (`a: i64`): the name is what \
                     callers use as a keyword argument",
                ));
            }
        };
        let ty = &*pat_ty.ty;
        match ty {
            Type::Reference(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "task parameters must be owned types deserialised from JSON \
                     (`String`, not `&str`; `Vec<T>`, not `&[T]`)",
                ));
            }
            Type::ImplTrait(t) => {
                return Err(syn::Error::new(
                    t.span(),
                    "task parameters must be concrete types, not `impl Trait`",
                ));
            }
            _ => {}
        }
        let param_name = LitStr::new(&ident.unraw().to_string(), ident.span());
        let optional = is_option(ty);
        params.push(quote! {
            ::sprout_guest::__private::Param { name: #param_name, optional: #optional }
        });
        let local = format_ident!("__sprout_arg{}", i);
        lets.push(quote_spanned! {ty.span()=>
            let #local: #ty = __sprout_bound.arg(#i)?;
        });
        call_args.push(local);
    }

    let ret_span = match &sig.output {
        ReturnType::Default => fn_ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let finish = quote_spanned! {ret_span=>
        (&__sprout_out).__sprout_kind().finish(__sprout_out)
    };

    let cfgs: Vec<_> = func
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .collect();
    let vis = &func.vis;
    let konst = task_const(fn_ident);

    Ok(quote! {
        #func

        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_upper_case_globals, dead_code)]
        #vis const #konst: ::sprout_guest::__private::TaskDef = {
            #[allow(unused_mut, unused_variables, clippy::let_unit_value, clippy::unit_arg)]
            fn __sprout_run(
                __sprout_call: ::sprout_guest::__private::Call,
            ) -> ::core::result::Result<::std::string::String, ::sprout_guest::TaskError> {
                const __SPROUT_PARAMS: &[::sprout_guest::__private::Param] = &[#(#params),*];
                let mut __sprout_bound =
                    ::sprout_guest::__private::bind(#task_name, __SPROUT_PARAMS, __sprout_call)?;
                #(#lets)*
                let __sprout_out = #fn_ident(#(#call_args),*);
                #[allow(unused_imports)]
                use ::sprout_guest::__private::{ResultKind as _, ValueKind as _};
                #finish
            }
            ::sprout_guest::__private::TaskDef::new(#task_name, __sprout_run)
        };
    })
}

fn expand_export(input: TokenStream2) -> syn::Result<TokenStream2> {
    let paths = Punctuated::<Path, Token![,]>::parse_terminated.parse2(input)?;
    if paths.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            "export_tasks! needs the task functions to export: `export_tasks!(add, mul);`",
        ));
    }
    let defs = paths.iter().map(|path| {
        let mut path = path.clone();
        let last = path
            .segments
            .last_mut()
            .expect("a parsed path has a segment");
        last.ident = task_const(&last.ident);
        path
    });

    Ok(quote! {
        /// Every task this file exports, in the order given to `sprout_guest::export_tasks!`.
        ///
        /// Call it from native tests to go through the same JSON argument binding the host
        /// uses: `TASKS.run("add", "[1, 2]", "{}")`.
        #[allow(dead_code)]
        pub(crate) static TASKS: ::sprout_guest::TaskSet = ::sprout_guest::TaskSet::__new(&[#(#defs),*]);

        const _: () = {
            #[allow(dead_code)]
            struct __SproutGuest;

            impl ::sprout_guest::bindings::Guest for __SproutGuest {
                fn tasks() -> ::std::vec::Vec<::std::string::String> {
                    TASKS.__wit_tasks()
                }

                fn run(
                    task: ::std::string::String,
                    args_json: ::std::string::String,
                    kwargs_json: ::std::string::String,
                ) -> ::core::result::Result<::std::string::String, ::sprout_guest::bindings::TaskError> {
                    TASKS.__wit_run(&task, &args_json, &kwargs_json)
                }
            }

            #[cfg(target_arch = "wasm32")]
            ::sprout_guest::bindings::export!(__SproutGuest with_types_in ::sprout_guest::bindings);
        };
    })
}
